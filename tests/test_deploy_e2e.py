"""Git deploys end to end: the control plane, a real agent, real pm2, real nginx, pebble.

One stack per module (starting it costs seconds); each test deploys its own app.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from serverflow_testkit import wait_for
from serverflow_testkit.controlplane import Deployment as Stack
from serverflow_testkit.controlplane import bootstrap
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.nginx import NginxServer, start_nginx, world_readable_dir
from serverflow_testkit.pebble import PebbleServer, start_pebble
from serverflow_testkit.pm2 import pm2_home
from serverflow_testkit.protocol_peer import AgentProcess, register_agent


@dataclass
class World:
    stack: Stack
    nginx: NginxServer
    pebble: PebbleServer
    base: Path
    agent_state: Path
    pm2: Path
    agent: AgentProcess | None = None
    repos: dict[str, GitRepo] = field(default_factory=dict)

    def start_agent(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")}
        self.agent = AgentProcess(self.agent_state, env, self.base / "agent.log").start()
        wait_for(lambda: self.server()["status"] == "online", 60, "the agent online")

    def server(self) -> dict[str, Any]:
        with self.stack.http() as http:
            servers = http.get("/servers").json()["servers"]
        return dict(next(s for s in servers if s["name"] == "web-1"))

    def https(self, domain: str, path: str = "/") -> tuple[int, str]:
        """GET https://DOMAIN/ through nginx, verified against pebble's root, SNI = DOMAIN."""
        context = ssl.create_default_context(cafile=str(self.pebble.root()))
        with (
            socket.create_connection(("127.0.0.1", self.nginx.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")

    def http(self, domain: str, path: str = "/") -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.nginx.http_port}{path}",
            headers={"Host": domain},
            timeout=5,
            follow_redirects=False,
        )

    def serves_steadily(self, domain: str, seconds: float = 0.5) -> bool:
        """200s for `seconds` in a row: right after a reload, nginx's old workers may still
        take a connection or two with the previous configuration (the agent's own proxy
        check waits the same way)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if self.http(domain).status_code != 200:
                return False
        return True

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.stack.cli(*args, check=check)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.stack.http() as http:
            return http.request(method, path, **kwargs)

    def deployments(self, app: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/apps/{app}/deployments").json()["deployments"])

    def latest(self, app: str) -> dict[str, Any]:
        return self.deployments(app)[0]

    def wait_finished(self, app: str, count: int, timeout: float = 300) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            rows = self.deployments(app)
            if len(rows) >= count and rows[0]["status"] in ("live", "failed"):
                return rows[0]
            return None

        return dict(wait_for(done, timeout, f"deployment #{count} of {app} to end"))

    def push(self, app: str, commit: str, branch: str = "main") -> httpx.Response:
        """What GitHub sends on a push, signed with the app's webhook secret."""
        hook = self.api("GET", f"/apps/{app}/webhook").json()
        body = json.dumps({"ref": f"refs/heads/{branch}", "after": commit}).encode()
        signature = "sha256=" + hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
        return httpx.post(
            hook["github_url"],
            content=body,
            timeout=30,
            headers={
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            },
        )


class RequestLoop:
    """Requests in a loop while a deploy happens; records every failure."""

    def __init__(self, fetch: Any) -> None:
        self.fetch = fetch
        self.bodies: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = self.fetch()
                if status != 200:
                    self.failures.append(f"HTTP {status}: {body[:200]}")
                else:
                    self.bodies.append(body)
            except OSError as exc:
                self.failures.append(repr(exc))
            time.sleep(0.01)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with started_world() as world:
        yield world


@contextlib.contextmanager
def started_world(env: dict[str, str] | None = None) -> Iterator[World]:
    """The stack, its control plane with `env` added to its environment."""
    base = world_readable_dir("sf-e2e-")
    nginx = start_nginx(base / "nginx")
    pebble = start_pebble(base / "pebble")
    stack = None
    world = None
    try:
        with pm2_home(base) as pm2:
            stack = bootstrap(
                base / "data", env={"SERVERFLOW_HEARTBEAT_INTERVAL_MS": "1000", **(env or {})}
            )
            made = stack.http().post("/servers", json={"name": "web-1"}).json()
            state = base / "agent"
            deploy = {
                "apps_dir": str(base / "apps"),
                "cache_dir": str(base / "cache"),
                "pm2_home": str(pm2),
                "port_range": [24000, 24200],
                "drain_seconds": 1,
                "nginx": nginx.config_section(base / "certs"),
                "acme": pebble.acme_section(base, base / "nginx" / "acme-webroot"),
            }
            register_agent(stack.url, made["install"]["token"], state, deploy=deploy)
            world = World(stack, nginx, pebble, base, state, pm2)
            world.start_agent()
            yield world
    finally:
        if world is not None and world.agent is not None:
            world.agent.stop()
        if stack is not None:
            stack.cp.stop()
        nginx.stop()
        pebble.stop()


def _node_repo(world: World, name: str) -> tuple[GitRepo, str]:
    repo = GitRepo(world.base / "repos" / name)
    world.repos[name] = repo
    return repo, repo.commit("node", {"version.txt": "v1"}, message="v1")


def test_node_app_hero_path(world: World) -> None:
    repo, v1 = _node_repo(world, "shop")
    domain = "shop.e2e.test"
    world.cli(
        "apps",
        "create",
        "shop",
        "--server",
        "web-1",
        "--repo",
        repo.url,
        "--domain",
        domain,
        "--health-path",
        "/healthz",
    )

    first = world.cli("deploy", "shop", "--wait")
    assert "==> live" in first.stdout, first.stdout + first.stderr
    for stage in ("resolv", "build", "health", "proxy"):
        assert stage in first.stdout.lower(), stage
    # The certificate step is in the log, with its outcome.
    assert f"[certificate] certificate for {domain}: issued (valid until " in first.stdout
    status, body = world.https(domain)
    assert status == 200 and "v1" in body
    assert world.http(domain).status_code == 301  # HTTP redirects to HTTPS
    live = world.latest("shop")
    assert live["commit_sha"] == v1 and live["status"] == "live" and live["duration_ms"] > 0

    # A push through the webhook goes live with zero failed requests.
    v2 = repo.commit("node", {"version.txt": "v2"}, message="v2")
    with RequestLoop(lambda: world.https(domain)) as loop:
        assert world.push("shop", v2).status_code == 202
        second = world.wait_finished("shop", 2)
        wait_for(lambda: loop.bodies and "v2" in loop.bodies[-1], 30, "v2 served")
    assert second["status"] == "live" and second["commit_sha"] == v2
    assert second["triggered_by"] == "webhook:github"
    assert loop.failures == [] and len(loop.bodies) > 10

    # A commit that crashes on start is refused; v2 keeps serving, no failed request.
    broken = repo.commit("node_crash", message="crash")
    with RequestLoop(lambda: world.https(domain)) as loop:
        assert world.push("shop", broken).status_code == 202
        third = world.wait_finished("shop", 3)
    assert third["status"] == "failed" and third["reason"]
    assert loop.failures == [] and all("v2" in body for body in loop.bodies)
    logs = world.cli("logs", "shop", "--deploy").stdout
    # The app's complaint is shown once, though PM2 started it several times.
    assert logs.count("fatal: DATABASE_URL is not set") == 1, logs
    assert "failed" in logs.lower()

    # Rollback brings back the first release, without a build.
    back = world.cli("rollback", "shop", "--wait")
    assert "==> live" in back.stdout, back.stdout + back.stderr
    assert "v1" in world.https(domain)[1]
    rollback = world.latest("shop")
    assert rollback["kind"] == "rollback" and rollback["release"] == live["release"]

    # The control plane stopped: the app keeps serving; PM2 restarts a killed process.
    world.stack.cp.stop()
    try:
        assert "v1" in world.https(domain)[1]
        pid = int(world.https(domain)[1].rsplit("pid", 1)[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        new_pid = wait_for(lambda: _pid_serving(world, domain, pid), 30, "PM2 restart")
        assert new_pid != pid and psutil.pid_exists(new_pid)
    finally:
        world.stack.cp.start()
    wait_for(lambda: world.server()["status"] == "online", 90, "agent back")


def _pid_serving(world: World, domain: str, dead: int) -> int | None:
    try:
        status, body = world.https(domain)
    except OSError:
        return None
    if status != 200:
        return None
    pid = int(body.rsplit("pid", 1)[1].split()[0])
    return pid if pid != dead else None


def test_python_app(world: World) -> None:
    repo = GitRepo(world.base / "repos" / "api")
    repo.commit("python", {"version.txt": "p1"}, message="p1")
    domain = "api.e2e.test"
    world.cli(
        "apps",
        "create",
        "api",
        "--server",
        "web-1",
        "--repo",
        repo.url,
        "--domain",
        domain,
        "--health-path",
        "/healthz",
    )
    assert "==> live" in world.cli("deploy", "api", "--wait").stdout
    assert "python p1" in world.https(domain)[1]
    p2 = repo.commit("python", {"version.txt": "p2"}, message="p2")
    with RequestLoop(lambda: world.https(domain)) as loop:
        world.push("api", p2)
        assert world.wait_finished("api", 2)["status"] == "live"
        wait_for(lambda: loop.bodies and "p2" in loop.bodies[-1], 30, "p2 served")
    assert loop.failures == []
    repo.commit("python", {"app.py": "raise SystemExit('boom at start')\n"}, message="broken")
    failed = world.cli("deploy", "api", "--wait", check=False)
    assert failed.returncode != 0 and world.latest("api")["status"] == "failed"
    assert "p2" in world.https(domain)[1]
    assert "==> live" in world.cli("rollback", "api", "--wait").stdout
    assert "p1" in world.https(domain)[1]


def test_a_config_that_breaks_nginx_is_refused(world: World) -> None:
    repo, _ = _node_repo(world, "good")
    world.cli(
        "apps",
        "create",
        "good",
        "--server",
        "web-1",
        "--repo",
        repo.url,
        "--domain",
        "good.e2e.test",
        "--health-path",
        "/healthz",
        "--no-tls",
    )
    assert "==> live" in world.cli("deploy", "good", "--wait").stdout
    long_domain = ".".join(["a" * 60] * 4) + ".test"  # valid, but beyond nginx's hash bucket
    bad, _ = _node_repo(world, "bad")
    world.cli(
        "apps",
        "create",
        "bad",
        "--server",
        "web-1",
        "--repo",
        bad.url,
        "--domain",
        long_domain,
        "--health-path",
        "/healthz",
        "--no-tls",
    )
    result = world.cli("deploy", "bad", "--wait", check=False)
    assert result.returncode != 0
    failed = world.latest("bad")
    assert failed["status"] == "failed" and "nginx" in (failed["reason"] or "").lower()
    assert "v1" in world.http("good.e2e.test").text
    assert not list(world.nginx.conf_dir.glob("bad*.conf"))


BAD_INPUTS = ["missing repository", "missing branch", "failing build", "port taken"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_ends_the_deployment_with_a_reason(world: World, case: str) -> None:
    name = "bad-" + case.split()[1][:6]
    repo, _ = _node_repo(world, name)
    domain = f"{name}.e2e.test"
    world.cli(
        "apps",
        "create",
        name,
        "--server",
        "web-1",
        "--repo",
        repo.url,
        "--domain",
        domain,
        "--health-path",
        "/healthz",
        "--no-tls",
    )
    assert "==> live" in world.cli("deploy", name, "--wait").stdout
    blocker = None
    if case == "missing repository":
        world.api("PATCH", f"/apps/{name}", json={"repo": str(world.base / "nowhere")})
        expected = "repository"
    elif case == "missing branch":
        world.api("PATCH", f"/apps/{name}", json={"branch": "no-such-branch"})
        expected = "no-such-branch"
    elif case == "failing build":
        world.api("PATCH", f"/apps/{name}", json={"build": ["node -e process.exit(3)"]})
        expected = "build"
    else:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        world.api("PATCH", f"/apps/{name}", json={"port": port})
        expected = str(port)
    try:
        result = world.cli("deploy", name, "--wait", check=False)
    finally:
        if blocker is not None:
            blocker.close()
    assert result.returncode != 0
    failed = world.latest(name)
    assert failed["status"] == "failed"
    assert expected in (failed["reason"] or ""), failed["reason"]
    assert expected in result.stdout
    assert "v1" in world.http(domain).text  # the previous release keeps serving


def test_apps_come_back_after_a_server_reboot(world: World) -> None:
    """A reboot loses the PM2 processes; the reconnecting agent gets its desired state."""
    repo, _ = _node_repo(world, "boot")
    world.cli(
        "apps",
        "create",
        "boot",
        "--server",
        "web-1",
        "--repo",
        repo.url,
        "--domain",
        "boot.e2e.test",
        "--health-path",
        "/healthz",
        "--no-tls",
    )
    assert "==> live" in world.cli("deploy", "boot", "--wait").stdout
    assert world.agent is not None
    world.agent.stop()
    subprocess.run(
        ["pm2", "kill"],
        env={**os.environ, "PM2_HOME": str(world.pm2)},
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert world.http("boot.e2e.test").status_code == 502  # nginx up, the app gone
    world.start_agent()
    wait_for(lambda: world.serves_steadily("boot.e2e.test"), 120, "app restarted")
    answer = world.http("boot.e2e.test")
    assert "v1" in answer.text, f"{answer.status_code}: {answer.text[:200]}\n{world.agent.log()}"
    assert len(world.deployments("boot")) == 1  # restarted from its release, not redeployed
