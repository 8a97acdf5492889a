// A tiny app for deploy tests: GET / says which version runs, GET /healthz is 200.
const http = require("http");
const fs = require("fs");
const path = require("path");
const greet = require("sf-greeting"); // a real (offline) dependency from vendor/

const version = fs.readFileSync(path.join(__dirname, "version.txt"), "utf8").trim();

http
  .createServer((req, res) => {
    if (req.url === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
      return;
    }
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`${greet(version)} pid ${process.pid}\n`);
  })
  .listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
