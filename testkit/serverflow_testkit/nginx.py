"""A throwaway nginx master (own prefix, free ports) and tiny upstream apps for it to front.

The prefix directory is world-readable on purpose: nginx workers run as `nobody` and must
read the static roots and the ACME webroot kept under it (pytest's tmp_path is 0700).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from serverflow_agent.deploy.settings import NginxSettings
from serverflow_testkit import free_port, missing, stop_process, wait_listening

MAIN_CONF = """daemon off; master_process on; worker_processes 1; pid {dir}/nginx.pid;
error_log {dir}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
  include /etc/nginx/mime.types;
  access_log {dir}/logs/access.log;
  client_body_temp_path {dir}/tmp/body; proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi; uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  # What a host answers for names no app claims (Debian's default site plays this part).
  server {{ listen {http_port} default_server; server_name _; return 404; }}
  include {dir}/conf.d/*.conf;
}}
"""


def world_readable_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class NginxServer:
    dir: Path
    conf: Path
    conf_dir: Path
    http_port: int
    https_port: int
    process: subprocess.Popen[bytes]

    @property
    def test_argv(self) -> tuple[str, ...]:
        return ("nginx", "-t", "-c", str(self.conf), "-p", f"{self.dir}/")

    @property
    def reload_argv(self) -> tuple[str, ...]:
        return ("nginx", "-s", "reload", "-c", str(self.conf), "-p", f"{self.dir}/")

    @property
    def error_log(self) -> Path:
        return self.dir / "logs" / "error.log"

    def config_section(self, certs_dir: Path) -> dict[str, object]:
        """The `deploy.nginx` section of agent.json for this nginx."""
        return {
            "conf_dir": str(self.conf_dir),
            "test": list(self.test_argv),
            "reload": list(self.reload_argv),
            "http_port": self.http_port,
            "https_port": self.https_port,
            "certs_dir": str(certs_dir),
        }

    def nginx_settings(self, certs_dir: Path) -> NginxSettings:
        return NginxSettings(
            conf_dir=self.conf_dir,
            test=self.test_argv,
            reload=self.reload_argv,
            http_port=self.http_port,
            https_port=self.https_port,
            certs_dir=certs_dir,
        )

    def reset(self) -> None:
        """Forget every app (between tests): empty conf.d and reload."""
        for path in self.conf_dir.glob("*.conf"):
            path.unlink()
        subprocess.run(self.reload_argv, check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        stop_process(self.process)


def start_nginx(directory: Path) -> NginxServer:
    """nginx in `directory` (which must be world-readable), answering on free ports."""
    if shutil.which("nginx") is None:
        missing("nginx", "the nginx binary is not installed (apt-get install nginx)")
    for sub in ("logs", "tmp", "conf.d"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    http_port, https_port = free_port(), free_port()
    conf = directory / "nginx.conf"
    conf.write_text(MAIN_CONF.format(dir=directory, http_port=http_port))
    with open(directory / "logs" / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", f"{directory}/"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = NginxServer(directory, conf, directory / "conf.d", http_port, https_port, process)
    wait_listening("nginx", process, http_port, directory / "logs" / "stderr.log")
    return server


class Upstream:
    """A tiny HTTP app on 127.0.0.1: `/` answers its name, `/headers` echoes the request."""

    def __init__(self, name: str) -> None:
        self.name = name
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.endswith("/headers"):
                    body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                else:
                    body = f"{outer.name} {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
