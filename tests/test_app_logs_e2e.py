# ruff: noqa: RUF001 (French typography: the apostrophe is U+2019)
"""`serverflow logs APP`: the app's own output, from a real agent and real PM2 through the
control plane's API (lines, and server-sent events while following), printed by the CLI
with each line's process type and release; `--deploy` for the deployment's log.

One stack per module (control plane, agent, PM2); the page and API checks that need no
agent run in-process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverflow_testkit import wait_for
from serverflow_testkit.controlplane import Deployment as Stack
from serverflow_testkit.controlplane import bootstrap, cli_env, run_cli
from serverflow_testkit.deploy import get, port_range
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.pm2 import pm2_home, require_node_and_pm2
from serverflow_testkit.protocol_peer import AgentProcess, register_agent
from tests.conftest import ControlPlaneUnderTest, sign_in

SERVER_JS = """
const http = require("http");
http
  .createServer((req, res) => {
    if (req.url.startsWith("/err")) console.error("oops " + req.url);
    else if (req.url !== "/healthz") console.log("GET " + req.url);
    res.end("ok\\n");
  })
  .listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
"""
WORKER_JS = """
console.log("worker " + process.env.SERVERFLOW_PROCESS + " up");
setInterval(() => console.log("tick"), 1000);
"""
APP_FILES = {
    "server.js": SERVER_JS,
    "worker.js": WORKER_JS,
    "Procfile": "web: node server.js\nworker: node worker.js\n",
}


@dataclass
class World:
    stack: Stack
    base: Path
    agent_state: Path
    agent: AgentProcess | None = None
    release: str = ""
    port: int = 0
    followers: list[subprocess.Popen[str]] = field(default_factory=list)

    def start_agent(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")}
        self.agent = AgentProcess(self.agent_state, env, self.base / "agent.log").start()
        wait_for(lambda: self.server()["status"] == "online", 60, "the agent online")

    def server(self) -> dict[str, Any]:
        with self.stack.http() as http:
            servers = http.get("/servers").json()["servers"]
        return dict(next(s for s in servers if s["name"] == "web-1"))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.stack.cli(*args, check=check)

    def api(self, path: str, role: str = "owner") -> httpx.Response:
        with self.stack.http(role) as http:
            return http.get(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_node_and_pm2()
    base = tmp_path_factory.mktemp("logs-e2e")
    stack = None
    world = None
    try:
        with pm2_home(base) as pm2:
            stack = bootstrap(base / "data", env={"SERVERFLOW_HEARTBEAT_INTERVAL_MS": "1000"})
            made = stack.http().post("/servers", json={"name": "web-1"}).json()
            deploy = {
                "apps_dir": str(base / "apps"),
                "cache_dir": str(base / "cache"),
                "pm2_home": str(pm2),
                "port_range": list(port_range()),
                "drain_seconds": 0.2,
            }
            state = base / "agent"
            register_agent(stack.url, made["install"]["token"], state, deploy=deploy)
            world = World(stack, base, state)
            world.start_agent()
            repo = GitRepo(base / "repos" / "shop")
            repo.commit("node", APP_FILES)
            world.cli(
                "apps", "create", "shop", "--server", "web-1", "--repo", repo.url,
                "--health-path", "/healthz",
            )  # fmt: skip
            deployed = world.cli("deploy", "shop", "--wait")
            assert "==> live" in deployed.stdout, deployed.stdout + deployed.stderr
            with stack.http() as http:
                world.release = http.get("/apps/shop/deployments").json()["deployments"][0][
                    "release"
                ]
            yield world
    finally:
        for follower in world.followers if world else []:
            if follower.poll() is None:
                follower.kill()
                follower.wait(timeout=10)
        if world is not None and world.agent is not None:
            world.agent.stop()
        if stack is not None:
            stack.cp.stop()


def _port(world: World) -> int:
    """The web process's port, as it says itself in its first line."""
    if not world.port:
        shown = world.cli("logs", "shop").stdout
        found = re.search(rf"web {world.release} \| listening on (\d+)", shown)
        assert found, shown
        world.port = int(found[1])
    return world.port


class Follower:
    """`serverflow logs APP --follow` as a user runs it; its output read as it comes."""

    def __init__(self, world: World, *args: str) -> None:
        env = dict(
            world.stack.cp.env,
            SERVERFLOW_URL=world.stack.url,
            SERVERFLOW_TOKEN=world.stack.tokens["viewer"],
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serverflow", "logs", "shop", "--follow", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        world.followers.append(self.process)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.process.stdout, self.lines), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.process.stderr, self.errors), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def shows(self, line: str) -> bool:
        return line in self.lines

    def interrupt(self) -> int:
        """Ctrl-C."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        for reader in self._readers:
            reader.join(timeout=10)
        return code


def test_logs_prefix_each_line_with_its_process_and_release(world: World) -> None:
    release = world.release
    port = _port(world)
    shown = world.cli("logs", "shop").stdout.splitlines()
    assert f"web {release} | listening on {port}" in shown
    assert f"worker {release} | worker worker.1 up" in shown
    assert f"worker {release} | tick" in shown
    assert len(world.cli("logs", "shop", "--lines", "2").stdout.splitlines()) == 2

    assert get(port, "/err-once")[0] == 200  # stderr too, in order with stdout
    wait_for(
        lambda: f"web {release} | oops /err-once" in world.cli("logs", "shop").stdout,
        30,
        "the stderr line",
    )
    answer = world.api("/apps/shop/logs?lines=1000", role="viewer").json()
    oops = next(line for line in answer["lines"] if line["line"] == "oops /err-once")
    assert oops == {**oops, "server": "web-1", "type": "web", "index": 1, "stream": "err"}
    assert oops["release"] == release and oops["at"] is not None
    assert answer["problems"] == []

    # --deploy: the latest deployment's log, as before.
    deploy_log = world.cli("logs", "shop", "--deploy").stdout
    assert "health check passed" in deploy_log and "listening on" not in deploy_log
    followed = world.cli("logs", "shop", "--deploy", "--follow").stdout
    assert "==> live" in followed


def test_follow_shows_what_the_app_prints_after_it_started(world: World) -> None:
    release = world.release
    port = _port(world)
    follower = Follower(world)
    wait_for(lambda: follower.shows(f"web {release} | listening on {port}"), 60, "the last lines")
    marker = f"/after-the-follow-started-{uuid.uuid4().hex[:8]}"
    assert get(port, marker)[0] == 200
    wait_for(lambda: follower.shows(f"web {release} | GET {marker}"), 30, "the new line")
    # Each following command watches for a while, then the next takes over, with the
    # cursor: the worker's ticks keep coming past the first one's end, none twice.
    server = world.server()["id"]

    def follows_done() -> list[dict[str, Any]]:
        commands = world.api(f"/servers/{server}/commands?limit=50").json()["commands"]
        return [
            c for c in commands
            if c["action"] == "app.logs" and "follow_s" in c["params"] and c["status"] == "ok"
        ]  # fmt: skip

    wait_for(follows_done, 90, "a following command to end")
    ticks = follower.lines.count(f"worker {release} | tick")
    wait_for(lambda: follower.lines.count(f"worker {release} | tick") >= ticks + 3, 30, "ticks")
    assert follower.lines.count(f"web {release} | GET {marker}") == 1
    assert follower.interrupt() == 0, follower.errors  # Ctrl-C ends it quietly
    assert follower.errors == []


def test_logs_are_scoped_and_an_offline_agent_is_a_clear_error(world: World) -> None:
    # Another organisation cannot read them (nor tell that the app exists).
    env = cli_env(world.stack.cp.data_dir)
    run_cli("users", "create", "eve@other.test", "--new-org", "Other", "--role", "owner", env=env)
    token = run_cli(
        "tokens", "create", "--org", "other", "--name", "eve", "--role", "owner", "--json", env=env
    ).stdout
    other = httpx.get(
        f"{world.stack.url}/api/v1/apps/shop/logs",
        headers={"Authorization": f"Bearer {json.loads(token)['token']}"},
        timeout=30,
    )
    assert other.status_code == 404 and other.json()["error"]["code"] == "APP001"

    assert world.agent is not None
    world.agent.stop()
    wait_for(lambda: world.server()["status"] == "offline", 60, "the agent offline")
    refused = world.cli("logs", "shop", check=False)
    assert refused.returncode != 0
    assert "[AGT001] the agent of web-1 is not connected" in refused.stderr
    answer = world.api("/apps/shop/logs?follow=true")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "AGT001"
    world.start_agent()
    assert f"web {world.release} | listening on" in world.cli("logs", "shop").stdout


# -- in-process: the page and what the API says without an agent -------------------


async def test_the_app_page_has_a_logs_section_in_the_readers_language(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    made = await client.post("/api/v1/servers", json={"name": "web-1"}, headers=tenant.auth())
    server = (await made.get_json())["id"]
    created = await client.post(
        "/api/v1/apps",
        json={"name": "shop", "repo": "https://git.example/shop.git", "servers": [server]},
        headers=tenant.auth(),
    )
    app = await created.get_json()
    await sign_in(client, tenant.owner.email)
    page = await (await client.get(f"/apps/{app['id']}")).get_data(as_text=True)
    assert 'id="runtime-logs"' in page and 'id="runtime-log-follow"' in page
    assert "Not running yet: deploy the app to see what it prints." in page
    french = await client.get(f"/apps/{app['id']}", headers={"Accept-Language": "fr"})
    text = await french.get_data(as_text=True)
    assert "Journaux" in text and "Suivre en direct" in text
    assert "Pas encore lancée : déployez l’application pour voir ce qu’elle affiche." in text

    # Its agent never connected: a clear error, never a stream that says nothing.
    for query in ("", "?follow=true"):
        answer = await client.get(f"/api/v1/apps/{app['id']}/logs{query}")
        assert answer.status_code == 409
        error = (await answer.get_json())["error"]
        assert error["code"] == "AGT001" and "web-1" in error["message"]
