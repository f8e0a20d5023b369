// Echo server on Node's `ws`, for wshost-bench's echo table (the bench starts it itself).
//
//   cd bench/node && npm install && node echo.js    # then: wshost-bench all --only echo
//
// Text comes back as text, binary as binary, like scripts/echo.rhai. Listens on a free port and
// says so on stderr the way wshost does, so the bench finds the port the same way.
const { WebSocketServer } = require("ws");

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
wss.on("listening", () => {
  console.error(`listening on ws://127.0.0.1:${wss.address().port}/`);
});
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
});
