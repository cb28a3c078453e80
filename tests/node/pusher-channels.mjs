// pusher-js with many channels on one socket: it subscribes to CHANNELS
// channels at once (as it does on every connect) and prints one JSON line
// per connection state, error and completed round of subscriptions, until
// ROUNDS rounds are done. The test restarts the hub between rounds.
import Pusher from "pusher-js";

const out = (o) => console.log(JSON.stringify(o));
const n = Number(process.env.CHANNELS);
const rounds = Number(process.env.ROUNDS || 2);
const pusher = new Pusher(process.env.APP_KEY, {
  wsHost: process.env.HUB_HOST,
  wsPort: Number(process.env.HUB_PORT),
  forceTLS: false,
  enabledTransports: ["ws"],
  cluster: "local",
  disableStats: true,
});
pusher.connection.bind("state_change", (s) => out({ step: "state", ...s }));
pusher.connection.bind("error", (e) =>
  out({ step: "error", error: e?.error?.data ?? String(e) }),
);
let round = 0;
let ok = new Set();
for (let i = 0; i < n; i++) {
  const name = `room-${i}`;
  const channel = pusher.subscribe(name);
  channel.bind("pusher:subscription_error", (e) =>
    out({ step: "subscription_error", channel: name, error: e }),
  );
  channel.bind("pusher:subscription_succeeded", () => {
    ok.add(name);
    if (ok.size === n) {
      out({ step: "subscribed", round, count: ok.size });
      ok = new Set();
      round += 1;
      if (round === rounds) {
        pusher.disconnect();
        out({ step: "done" });
        process.exit(0);
      }
    }
  });
}
