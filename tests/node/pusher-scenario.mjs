// Drives slo-hub with the real Pusher libraries: pusher-js (the client, Node
// build) and the `pusher` server SDK for Node, configured with nothing but
// host, port and the app's credentials. Run by tests/pusher.rs, which checks
// the steps printed and the hub's own state.
//
// env: HUB_HOST, HUB_PORT, APP_ID, APP_KEY, APP_SECRET, HUB_API_KEY, LOGOUT_ISS;
// HUB_PORTS (optional, "p1,p2,..."): several nodes of one cluster. Alice's
// socket goes to the first, Bob's to the second, the server SDK to the
// third, the logout to the second (round-robin, wrapping).
//
// Prints one JSON line per step ({"step": name, ...}); exits non-zero with
// {"failed": name, "error": ...} at the first step that does not happen.
import PusherClient from "pusher-js";
import PusherServer from "pusher";
import http from "node:http";

const env = process.env;
const ports = (env.HUB_PORTS || env.HUB_PORT).split(",");
const port = (i) => ports[i % ports.length];
const server = new PusherServer({
  appId: env.APP_ID, key: env.APP_KEY, secret: env.APP_SECRET,
  host: env.HUB_HOST, port: port(2), useTLS: false,
});

function client(user, node) {
  return new PusherClient(env.APP_KEY, {
    wsHost: env.HUB_HOST, wsPort: Number(port(node)), forceTLS: false,
    enabledTransports: ["ws"], disableStats: true, cluster: "local",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        if (channelName === "private-forged") {
          return cb(null, { auth: env.APP_KEY + ":" + "0".repeat(64) });
        }
        const presence = channelName.startsWith("presence-")
          ? { user_id: user, user_info: { name: user.toUpperCase() } } : undefined;
        cb(null, server.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, cb) => cb(null, server.authenticateUser(socketId, { id: user })),
    },
  });
}

let current = "start";
function step(name, extra = {}) {
  console.log(JSON.stringify({ step: name, ...extra }));
}
function within(ms, what, executor) {
  current = what;
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("timed out: " + what)), ms);
    executor((v) => { clearTimeout(t); resolve(v); }, (e) => { clearTimeout(t); reject(e); });
  });
}
const T = 5000;

function connected(c) {
  return within(T, "connect", (ok, fail) => {
    // It may have connected while we awaited another client.
    if (c.connection.state === "connected") return ok(c.connection.socket_id);
    c.connection.bind("connected", () => ok(c.connection.socket_id));
    c.connection.bind("failed", () => fail(new Error("connection failed")));
  });
}
function subscribed(c, name) {
  return within(T, "subscribe " + name, (ok, fail) => {
    const ch = c.subscribe(name);
    // (For presence, `data` is the live member list: count it now.)
    ch.bind("pusher:subscription_succeeded", (data) => ok({ ch, data, count: data && data.count }));
    ch.bind("pusher:subscription_error", (e) => fail(new Error("subscription_error " + JSON.stringify(e))));
  });
}
function received(ch, event) {
  return within(T, "receive " + event, (ok) => ch.bind(event, (data, meta) => ok({ data, meta })));
}

async function main() {
  const alice = client("alice", 0);
  const bob = client("bob", 1);
  const aliceSocket = await connected(alice);
  await connected(bob);
  step("connected", { socket_id: aliceSocket });

  // The seed article's sample: a channel per visitor, "slo-event", {slo: true}.
  const { ch: visitor } = await subscribed(alice, "visitor42_incognito");
  const slo = received(visitor, "slo-event");
  await server.trigger("visitor42_incognito", "slo-event", { slo: true });
  const got = await slo;
  if (got.data.slo !== true) throw new Error("slo-event data " + JSON.stringify(got.data));
  step("seed_sample_slo_event", { data: got.data });

  // Private channel, signed by the server SDK.
  const { ch: priv } = await subscribed(alice, "private-alice");
  const privEvent = received(priv, "secret");
  await server.trigger(["private-alice"], "secret", { n: 1 });
  step("private_event", { data: (await privEvent).data });

  // A forged authorisation is refused with pusher:subscription_error.
  const forged = await within(T, "forged subscription refused", (ok, fail) => {
    const ch = alice.subscribe("private-forged");
    ch.bind("pusher:subscription_succeeded", () => fail(new Error("forged subscription accepted")));
    ch.bind("pusher:subscription_error", (e) => ok(e));
  });
  step("forged_refused", { status: forged.status });

  // Presence: alice then bob; alice sees bob join; the HTTP API sees both.
  const { ch: roomA, count: firstCount } = await subscribed(alice, "presence-room");
  const joined = within(T, "member_added", (ok) => roomA.bind("pusher:member_added", ok));
  const { ch: roomB, count: secondCount } = await subscribed(bob, "presence-room");
  const member = await joined;
  step("presence", {
    first_count: firstCount, second_count: secondCount,
    added: member.id, added_info: member.info,
    me: roomB.members.me && roomB.members.me.id,
  });
  const users = await (await server.get({ path: "/channels/presence-room/users" })).json();
  const list = await (await server.get({
    path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" },
  })).json();
  const one = await (await server.get({
    path: "/channels/presence-room", params: { info: "user_count,subscription_count" },
  })).json();
  step("channel_queries", { users, list, one });

  // Client events between alice and bob on a private channel.
  const { ch: chatA } = await subscribed(alice, "private-chat");
  const { ch: chatB } = await subscribed(bob, "private-chat");
  const typing = received(chatB, "client-typing");
  chatA.trigger("client-typing", { who: "alice" });
  step("client_event", { data: (await typing).data });

  // Batch trigger.
  const a = received(visitor, "batched");
  const b = received(priv, "batched");
  await server.triggerBatch([
    { channel: "visitor42_incognito", name: "batched", data: { i: 1 } },
    { channel: "private-alice", name: "batched", data: { i: 2 } },
  ]);
  step("batch", { a: (await a).data, b: (await b).data });

  // An oversized trigger is refused 413; the SDK's next trigger, on the
  // same keep-alive connection pool, still goes through.
  const pooled = new PusherServer({
    appId: env.APP_ID, key: env.APP_KEY, secret: env.APP_SECRET,
    host: env.HUB_HOST, port: port(2), useTLS: false,
    agent: new http.Agent({ keepAlive: true, maxSockets: 1 }),
  });
  await pooled.trigger("visitor42_incognito", "warm", {});
  let refused = null;
  try {
    await pooled.trigger("visitor42_incognito", "big", { pad: "x".repeat(200 * 1024) });
  } catch (e) {
    refused = e.status ?? String(e);
  }
  const after = received(visitor, "after_413");
  await pooled.trigger("visitor42_incognito", "after_413", { ok: true });
  step("after_413", { refused, data: (await after).data });

  // Bob leaves presence: alice sees it.
  const left = within(T, "member_removed", (ok) => roomA.bind("pusher:member_removed", ok));
  bob.unsubscribe("presence-room");
  step("member_removed", { id: (await left).id });

  // Sign-in, then the app terminates bob's connections.
  bob.signin();
  await within(T, "bob signin", (ok, fail) => bob.user.signinDonePromise.then(ok, fail));
  const hello = within(T, "sendToUser", (ok) => bob.user.bind("hello", ok));
  await server.sendToUser("bob", "hello", { to: "bob" });
  step("send_to_user", { data: await hello });
  const bobGone = within(T, "bob terminated", (ok) => bob.connection.bind("state_change", (s) => {
    if (s.current !== "connected") ok(s.current);
  }));
  await server.terminateUserConnections("bob");
  step("terminated", { state: await bobGone });

  // Bridge: alice signs in; a slo-hub logout of alice (any path; here the
  // backend API) reaches her as "slo-event" on her user channel, then 4009.
  alice.signin();
  await within(T, "alice signin", (ok, fail) => alice.user.signinDonePromise.then(ok, fail));
  const bridged = within(T, "bridged logout", (ok) => alice.user.bind("slo-event", ok));
  const aliceGone = within(T, "alice closed", (ok) => alice.connection.bind("error", (e) => ok(e)));
  const r = await fetch(`http://${env.HUB_HOST}:${port(1)}/v1/logout`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + env.HUB_API_KEY },
    body: JSON.stringify({ sub: "alice", iss: env.LOGOUT_ISS, reason: "user_logout" }),
  });
  if (r.status !== 200) throw new Error("/v1/logout: HTTP " + r.status + " " + (await r.text()));
  const logout = await bridged;
  const err = await aliceGone;
  step("bridged_logout", { data: logout, close_code: err && err.data && err.data.code });

  alice.disconnect();
  bob.disconnect();
  step("done");
  process.exit(0);
}

main().catch((e) => {
  console.log(JSON.stringify({ failed: current, error: String(e && e.stack || e) }));
  process.exit(1);
});
