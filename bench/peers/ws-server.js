// Peer for slo-hub's benchmark: node `ws` 8. Same semantics as the others:
// a socket's first message {"type":"auth","token":<user>} subscribes it to
// its user; POST /push {"user"} sends {"type":"logout",...} to that user's
// sockets and answers {"delivered":n}. Keep-alive HTTP.
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT || 9001);
const users = new Map();
let seq = 0;

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/push") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const { user } = JSON.parse(Buffer.concat(chunks));
    const set = users.get(user);
    let n = 0;
    if (set) {
      const msg = JSON.stringify({ type: "logout", id: String(++seq), user });
      for (const ws of set) {
        ws.send(msg);
        n++;
      }
    }
    const body = JSON.stringify({ delivered: n });
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
});
server.keepAliveTimeout = 120000;

const wss = new WebSocketServer({ server, path: "/ws", perMessageDeflate: false, maxPayload: 16384 });
wss.on("connection", (ws) => {
  let user = null;
  ws.on("message", (data) => {
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (m.type === "auth" && user === null) {
      user = String(m.token);
      let set = users.get(user);
      if (!set) users.set(user, (set = new Set()));
      set.add(ws);
      ws.send('{"type":"ready"}');
    }
  });
  ws.on("close", () => {
    if (user === null) return;
    const set = users.get(user);
    set.delete(ws);
    if (set.size === 0) users.delete(user);
  });
});

server.listen(port, "127.0.0.1", 4096, () => console.log(`ws peer on ${port}`));
