// Runs, but its health check fails.
const http = require("http");

http
  .createServer((req, res) => {
    if (req.url === "/healthz") {
      console.log("health check: database unreachable");
      res.writeHead(500, { "content-type": "text/plain" });
      res.end("database unreachable\n");
      return;
    }
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("hello from the unhealthy app\n");
  })
  .listen(Number(process.env.PORT));
