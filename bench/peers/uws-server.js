// Peer for slo-hub's benchmark: uWebSockets.js, written the idiomatic uWS way
// (one pub/sub topic per user). Same semantics as ws-server.js.
"use strict";
const uWS = require("uWebSockets.js");

const port = Number(process.env.PORT || 9002);
let seq = 0;

const app = uWS.App();
app.ws("/ws", {
  compression: uWS.DISABLED,
  maxPayloadLength: 16384,
  idleTimeout: 120,
  message: (ws, message) => {
    let m;
    try {
      m = JSON.parse(Buffer.from(message).toString());
    } catch (e) {
      return;
    }
    if (m.type === "auth" && !ws.getUserData().user) {
      ws.getUserData().user = String(m.token);
      ws.subscribe("u/" + m.token);
      ws.send('{"type":"ready"}', false);
    }
  },
});
app.post("/push", (res) => {
  let aborted = false;
  const chunks = [];
  res.onAborted(() => (aborted = true));
  res.onData((chunk, last) => {
    chunks.push(Buffer.from(chunk));
    if (!last) return;
    const { user } = JSON.parse(Buffer.concat(chunks));
    const topic = "u/" + user;
    const n = app.numSubscribers(topic);
    if (n > 0) app.publish(topic, JSON.stringify({ type: "logout", id: String(++seq), user }), false);
    if (!aborted) {
      res.cork(() => {
        res.writeHeader("content-type", "application/json").end(JSON.stringify({ delivered: n }));
      });
    }
  });
});
app.listen("127.0.0.1", port, (token) => {
  if (!token) {
    console.error("listen failed");
    process.exit(1);
  }
  console.log(`uws peer on ${port}`);
});
