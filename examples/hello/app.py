"""The sample app of the README: a web server from Python's standard library.

ServerFlow gives each release the port to listen on in $PORT and checks it answers
before sending it traffic.
"""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"Hello from ServerFlow!\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)  # `serverflow logs hello` shows it


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"hello listening on port {port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Hello).serve_forever()
