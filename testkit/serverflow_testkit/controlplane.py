"""A real `serverflow up` process on a free port, as a user would run it."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from serverflow_testkit import free_port


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")}
    env["SERVERFLOW_DATA_DIR"] = str(data_dir)
    if os.environ.get("SERVERFLOW_REQUIRE_REAL"):
        env["SERVERFLOW_REQUIRE_REAL"] = os.environ["SERVERFLOW_REQUIRE_REAL"]
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "serverflow", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"serverflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class ControlPlaneProcess:
    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, ca_file: Path | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.ca_file = ca_file
        scheme = "https" if env and env.get("SERVERFLOW_TLS_CERTFILE") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.env = cli_env(data_dir, **(env or {}))
        self.log_path = data_dir.parent / f"controlplane-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> ControlPlaneProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serverflow", "up", "--port", str(self.port)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serverflow up exited early:\n{self.log()}")
            try:
                verify: Any = (
                    ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
                )
                if httpx.get(self.url + "/healthz", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"serverflow up not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ControlPlaneProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Deployment:
    """A running control plane with an organisation and tokens for each role."""

    def __init__(self, cp: ControlPlaneProcess, tokens: dict[str, str]) -> None:
        self.cp = cp
        self.tokens = tokens
        self.url = cp.url

    def http(self, role: str = "owner") -> httpx.Client:
        verify: Any = (
            ssl.create_default_context(cafile=self.cp.ca_file) if self.cp.ca_file else True
        )
        return httpx.Client(
            base_url=self.url + "/api/v1",
            timeout=60,
            verify=verify,
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
        )

    def cli(
        self, *args: str, check: bool = True, role: str = "owner"
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.cp.env, SERVERFLOW_URL=self.url, SERVERFLOW_TOKEN=self.tokens[role])
        return run_cli(*args, env=env, check=check)


def bootstrap(
    data_dir: Path,
    env: dict[str, str] | None = None,
    org: str = "Acme",
    ca_file: Path | None = None,
) -> Deployment:
    """Migrate, create an owner (an instance operator too, as the first admin of
    `serverflow up` is) and a token per role, plus an "operator" token (an owner that also
    acts as an instance operator), start `serverflow up`."""
    import json

    cli = cli_env(data_dir, **(env or {}))
    slug = org.lower()
    run_cli("users", "create", f"owner@{slug}.test", "--new-org", org, "--role", "owner", env=cli)
    run_cli("operators", "add", f"owner@{slug}.test", env=cli)
    tokens = {}
    for role in ("owner", "admin", "member", "viewer", "operator"):
        flags = ["--role", "owner", "--operator"] if role == "operator" else ["--role", role]
        out = run_cli(
            "tokens", "create", "--org", slug, "--name", role, *flags, "--json", env=cli
        ).stdout
        tokens[role] = json.loads(out)["token"]
    return Deployment(ControlPlaneProcess(data_dir, env=env, ca_file=ca_file).start(), tokens)
