"""A private redis-server on a free port, in its own directory, with nothing saved to disk.

Its own process, so a test may stop it (an outage) and start it again on the same port.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from serverflow_testkit import free_port, missing, stop_process, wait_listening


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and wait until it accepts connections."""
        binary = shutil.which("redis-server")
        if binary is None:
            missing("Redis", "redis-server is not installed (apt-get install redis-server)")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(binary), *args], stdout=log, stderr=subprocess.STDOUT
            )
        wait_listening("Redis", self.process, self.port, self.log_path)
        return self

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s): the clients' connections close as in an outage."""
        stop_process(self.process)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_redis(directory: Path) -> RedisServer:
    return RedisServer(directory).start()
