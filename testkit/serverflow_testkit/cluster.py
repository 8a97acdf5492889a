"""Several real control-plane instances on one PostgreSQL and one Redis, behind nginx.

`start_instances` starts N `serverflow up` processes that share the database, the Redis
URL and the data directory's secrets (as instances behind one load balancer must);
`start_load_balancer` puts an nginx in front of them that proxies HTTP and WebSockets.
`Instance` is an API client for one of them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from serverflow_contract import protocol
from serverflow_testkit import free_port, missing, stop_process, wait_listening
from serverflow_testkit.controlplane import ControlPlaneProcess, cli_env, run_cli

PASSWORD = "correct horse battery staple"
EMAIL = "owner@acme.test"

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T]], what: str, timeout: float = 30) -> T:
    """Poll `check` until it returns something truthy; AssertionError after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = await check()
                if value:
                    return value
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


class Instance:
    """The API of one instance, as the organisation's owner token sees it."""

    def __init__(self, cp: ControlPlaneProcess, token: str) -> None:
        self.cp = cp
        self.api = httpx.AsyncClient(
            base_url=cp.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    async def register_agent(self, name: str) -> None:
        """A new server and its agent's registration: `agent.registered` on this instance."""
        token = await self.new_server(name)
        key = protocol.public_key_of(protocol.new_signing_key())
        registered = await self.api.post(
            "/api/v1/agents/register",
            json={"token": token, "public_key": key, "hostname": name},
        )
        assert registered.status_code == 201, registered.text

    async def new_server(self, name: str) -> str:
        """A new server; its one-time install token."""
        made = await self.api.post("/api/v1/servers", json={"name": name})
        assert made.status_code == 201, made.text
        token: str = made.json()["install"]["token"]
        return token

    async def server(self, name: str) -> dict[str, Any]:
        listed = await self.api.get("/api/v1/servers")
        assert listed.status_code == 200, listed.text
        for server in listed.json()["servers"]:
            if server["name"] == name:
                found: dict[str, Any] = server
                return found
        raise AssertionError(f"no server {name}")

    async def ready(self) -> tuple[int, dict[str, Any]]:
        answer = await self.api.get("/readyz")
        body: dict[str, Any] = answer.json()
        return answer.status_code, body

    async def instance_id(self) -> str:
        return str((await self.api.get("/healthz")).json()["instance"])

    async def close(self) -> None:
        await self.api.aclose()


def owner_token(data_dir: Path, env: dict[str, str]) -> str:
    """An organisation "acme" with its owner; an owner API token for it."""
    cli = cli_env(data_dir, **env)
    user = ["users", "create", EMAIL, "--new-org", "Acme", "--role", "owner", "--password-stdin"]
    run_cli(*user, input=PASSWORD + "\n", env=cli)
    made = run_cli(
        "tokens", "create", "--org", "acme", "--name", "t", "--role", "owner", "--json", env=cli
    )
    return str(json.loads(made.stdout)["token"])


def start_instances(
    base: Path, pg_url: str, redis_url: str, count: int = 2, **env: str
) -> list[ControlPlaneProcess]:
    """`count` instances sharing the database, Redis and the first one's secrets."""
    shared = {"SERVERFLOW_DATABASE_URL": pg_url, "SERVERFLOW_REDIS_URL": redis_url, **env}
    started: list[ControlPlaneProcess] = []
    try:
        for index in range(count):
            cp = ControlPlaneProcess(base / f"instance-{index}" / "data", env=shared)
            if started:
                cp.data_dir.mkdir(parents=True, exist_ok=True)
                shutil.copytree(started[0].data_dir / "secrets", cp.data_dir / "secrets")
            started.append(cp.start())
    except BaseException:
        for cp in started:
            cp.stop()
        raise
    return started


LB_CONF = """daemon off; master_process on; worker_processes 1; pid {dir}/nginx.pid;
worker_rlimit_nofile {files};
error_log {dir}/logs/error.log warn;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp/body; proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi; uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream serverflow {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://serverflow;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_read_timeout 3600s;
      proxy_connect_timeout 2s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""


@dataclass
class LoadBalancer:
    dir: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def start_load_balancer(
    directory: Path,
    backends: list[ControlPlaneProcess],
    *,
    backup: Sequence[ControlPlaneProcess] = (),
    connections: int = 1024,
    port: int | None = None,
    max_fails: int = 1,
) -> LoadBalancer:
    """nginx balancing HTTP and WebSockets over `backends`; `backup` ones get traffic only
    while every backend is down (so a test knows which instance an agent lands on).
    `port`: one chosen before (the instances' public URL names it), else a free one.
    `max_fails`: failed connections before nginx rests a backend for 2 s; 0 never rests
    one (a dead backend refuses at once and the next is tried, while a loaded one that is
    slow to accept is not taken out: under a reconnect storm, resting the survivor makes
    nginx answer "no live upstreams")."""
    if shutil.which("nginx") is None:
        missing("nginx", "the nginx binary is not installed (apt-get install nginx)")
    for sub in ("logs", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    lines = [
        f"    server 127.0.0.1:{cp.port} max_fails={max_fails} fail_timeout=2s;" for cp in backends
    ]
    lines += [f"    server 127.0.0.1:{cp.port} backup;" for cp in backup]
    port = port or free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        LB_CONF.format(
            dir=directory,
            port=port,
            servers="\n".join(lines),
            connections=connections,
            files=2 * connections + 64,
        )
    )
    with open(directory / "logs" / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", f"{directory}/"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    wait_listening("nginx", process, port, directory / "logs" / "stderr.log")
    return LoadBalancer(directory, port, process)
