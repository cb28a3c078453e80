// Peer for slo-hub's benchmark: socket.io 4 (WebSocket transport only, one
// room per user). The client emits "auth" with its user; POST /push emits
// "logout" to the room.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 9003);
let seq = 0;

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/push") {
    return; // socket.io answers its own paths; everything else is left to it
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const { user } = JSON.parse(Buffer.concat(chunks));
    const room = "u/" + user;
    const members = io.sockets.adapter.rooms.get(room);
    const n = members ? members.size : 0;
    if (n > 0) io.to(room).emit("logout", { type: "logout", id: String(++seq), user });
    const body = JSON.stringify({ delivered: n });
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
});
server.keepAliveTimeout = 120000;

const io = new Server(server, { transports: ["websocket"], perMessageDeflate: false, serveClient: false });
io.on("connection", (socket) => {
  socket.on("auth", (user) => {
    socket.join("u/" + user);
    socket.emit("ready");
  });
});

server.listen(port, "127.0.0.1", 4096, () => console.log(`socket.io peer on ${port}`));
