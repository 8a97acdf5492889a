"""The Redis event bus: events cross between control-plane instances, and survive an outage.

Two real `serverflow up` processes share one PostgreSQL database and one redis-server of
the test's own; a dashboard's live channel (`GET /live`, read as a browser does: session
cookie, same-origin WebSocket) on one instance sees what happens on the other.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from serverflow.bus_redis import RedisBus
from serverflow.errors import ConfigError
from serverflow.events import (
    LiveEvent,
    event_from_json,
    event_to_json,
    events_from_json,
    events_to_json,
)
from serverflow.settings import load_settings
from serverflow_testkit.cluster import EMAIL, PASSWORD, Instance, owner_token, until
from serverflow_testkit.controlplane import ControlPlaneProcess, cli_env, run_cli
from serverflow_testkit.redis import RedisServer

# -- serialisation -----------------------------------------------------------------------


def test_an_event_comes_back_from_json_as_it_was_sent() -> None:
    event = LiveEvent(
        "deployment.log",
        uuid.uuid4(),
        uuid.uuid4(),
        {"seq": 7, "line": "héllo ✓", "ok": True, "ratio": 0.5, "tags": ["a", None], "n": {}},
        datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        origin="a1b2c3",
    )
    assert event_from_json(event_to_json(event)) == event
    bare = LiveEvent("server.online", uuid.uuid4())
    assert event_from_json(event_to_json(bare)) == bare  # no server, no data, no origin
    # Values JSON has no type for arrive as strings, as the dashboard's frames show them.
    server = uuid.uuid4()
    odd = event_from_json(event_to_json(LiveEvent("x", uuid.uuid4(), data={"server": server})))
    assert odd.data == {"server": str(server)}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"kind":"x","organization_id":"nope","server_id":null,"data":{},"at":"2025-01-01T00:00:00+00:00","origin":""}',
        b'{"kind":"x","organization_id":"00000000-0000-0000-0000-000000000001","server_id":null,"data":[],"at":"2025-01-01T00:00:00+00:00","origin":""}',
        b'{"kind":"x","organization_id":"00000000-0000-0000-0000-000000000001","server_id":null,"data":{},"at":"yesterday","origin":""}',
    ],
)
def test_anything_else_is_refused_as_an_event(raw: bytes) -> None:
    with pytest.raises(ValueError):
        event_from_json(raw)


# -- configuration -------------------------------------------------------------------------


def test_a_redis_url_needs_postgresql(tmp_path: Path) -> None:
    env = {"SERVERFLOW_DATA_DIR": str(tmp_path), "SERVERFLOW_REDIS_URL": "redis://127.0.0.1/0"}
    with pytest.raises(ConfigError, match="SERVERFLOW_REDIS_URL is set, so several instances"):
        load_settings(env)
    with pytest.raises(ConfigError, match="not a Redis URL"):
        load_settings({**env, "SERVERFLOW_REDIS_URL": "http://127.0.0.1:6379"})
    pg = {**env, "SERVERFLOW_DATABASE_URL": "postgres://sf:pw@127.0.0.1/sf"}
    settings = load_settings({**pg, "SERVERFLOW_REDIS_URL": "redis://:hunter2@127.0.0.1:6379/3"})
    assert settings.redis_url == "redis://:hunter2@127.0.0.1:6379/3"
    assert "hunter2" not in json.dumps(settings.shown())

    # `serverflow up` refuses to start, with the reason and its stable code.
    refused = run_cli(
        "up", "--port", "1", env=cli_env(tmp_path / "data", **env_of(env)), check=False
    )
    assert refused.returncode != 0
    assert "[CFG001]" in refused.stderr, refused.stderr
    assert "they need a shared PostgreSQL database (SERVERFLOW_DATABASE_URL)" in refused.stderr
    assert not (tmp_path / "data" / "serverflow.sqlite3").exists()  # nothing was started


def env_of(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "SERVERFLOW_DATA_DIR"}


# -- two buses in one process, one Redis ------------------------------------------------


async def _drain(queue: asyncio.Queue[LiveEvent], until: str) -> list[LiveEvent]:
    seen = []
    while True:
        event = await asyncio.wait_for(queue.get(), 10)
        seen.append(event)
        if event.kind == until:
            return seen


async def test_each_subscriber_gets_each_event_once(redis_server: RedisServer) -> None:
    a, b = RedisBus(redis_server.url(), "a"), RedisBus(redis_server.url(), "b")
    elsewhere = RedisBus(redis_server.url(5), "c")  # another database: another deployment
    org = uuid.uuid4()
    for bus in (a, b, elsewhere):
        await bus.start()
    try:
        for bus in (a, b, elsewhere):
            for _ in range(200):
                if await bus.problem() is None:
                    break
                await asyncio.sleep(0.05)
            assert await bus.problem() is None
        async with (
            a.subscribe() as on_a,
            a.subscribe(local_only=True) as a_own,
            b.subscribe() as on_b,
            b.subscribe(local_only=True) as b_own,
            elsewhere.subscribe() as on_c,
        ):
            for n in range(50):
                a.publish(LiveEvent("test.n", org, data={"n": n}))
            received = await _drain(on_b, until="test.n") + [on_b.get_nowait() for _ in range(49)]
            assert [e.data["n"] for e in received] == list(range(50))  # in order, from A
            assert {e.origin for e in received} == {"a"}
            # B answers; A gets it after every echo of its own fifty (one connection, in
            # order): had any echo been delivered, it would be in the queue before it.
            b.publish(LiveEvent("test.done", org))
            on_a_seen = await _drain(on_a, until="test.done")
            assert [e.data.get("n") for e in on_a_seen] == [*range(50), None]
            assert [e.kind for e in await _drain(on_b, until="test.done")] == ["test.done"]
            # Plugins' subscriptions (local_only) get only their own instance's events.
            assert a_own.qsize() == 50 and b_own.qsize() == 1
            assert {b_own.get_nowait().origin} == {"b"}
            assert on_c.empty()
    finally:
        for bus in (a, b, elsewhere):
            await bus.stop()


async def test_gauges_reach_other_instances_as_each_servers_latest(
    redis_server: RedisServer,
) -> None:
    """server.metrics: every one to this instance's pages, to others only each server's
    newest, bundled; other events are not held back by them."""
    a, b = RedisBus(redis_server.url(), "a"), RedisBus(redis_server.url(), "b")
    org, web, db = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for bus in (a, b):
        await bus.start()
    try:
        await until(lambda: _up(a, b), "both buses connected")
        async with a.subscribe() as on_a, b.subscribe() as on_b:
            for n in range(20):
                a.publish(LiveEvent("server.metrics", org, web, {"cpu": n}))
                a.publish(LiveEvent("server.metrics", org, db, {"cpu": 100 + n}))
            a.publish(LiveEvent("test.done", org))
            # Queued before the coalescer could run: it arrives first, not after a second.
            assert (await asyncio.wait_for(on_b.get(), 10)).kind == "test.done"
            arrived = await _drain(on_b, until="server.metrics")
            arrived += [on_b.get_nowait() for _ in range(on_b.qsize())]
            metrics = {e.server_id: e.data for e in arrived if e.kind == "server.metrics"}
            assert metrics == {web: {"cpu": 19}, db: {"cpu": 119}}
            assert len([e for e in arrived if e.kind == "server.metrics"]) == 2
            assert on_a.qsize() == 41  # its own pages: every one, at once
    finally:
        for bus in (a, b):
            await bus.stop()


def test_a_bundle_comes_back_as_its_events() -> None:
    org = uuid.uuid4()
    events = [
        LiveEvent("server.metrics", org, uuid.uuid4(), {"n": n}, origin="a") for n in range(3)
    ]
    assert events_from_json(events_to_json(events)) == events
    assert events_from_json(event_to_json(events[0])) == events[:1]
    with pytest.raises(ValueError):
        events_from_json(b'{"bundle":[{"kind":"x"}]}')


async def _up(*buses: RedisBus) -> bool:
    return all([await bus.problem() is None for bus in buses])


# -- two real instances -------------------------------------------------------------------


class Live:
    """A signed-in dashboard's live channel on one instance."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def wait(self, kind: str, name: str, timeout: float = 20) -> dict[str, Any]:
        for frame in self.frames:
            if frame["kind"] == kind and frame["data"].get("name") == name:
                return frame
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                self.frames.append(frame)
                if frame["kind"] == kind and frame["data"].get("name") == name:
                    return frame

    def count(self, name: str) -> int:
        return sum(1 for f in self.frames if f["data"].get("name") == name)


@asynccontextmanager
async def live_channel(base: str) -> AsyncIterator[Live]:
    async with httpx.AsyncClient(base_url=base) as client:
        page = (await client.get("/login")).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf, page
        signed_in = await client.post(
            "/login", data={"csrf_token": csrf.group(1), "email": EMAIL, "password": PASSWORD}
        )
        assert signed_in.status_code == 302, signed_in.text
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    url = base.replace("http://", "ws://") + "/live"
    async with connect(url, additional_headers={"Origin": base, "Cookie": cookie}) as ws:
        live = Live(ws)
        assert json.loads(await ws.recv())["kind"] == "live.ready"
        yield live


@pytest.fixture
def instances(
    tmp_path: Path, pg_url: str, redis_server: RedisServer
) -> tuple[ControlPlaneProcess, ControlPlaneProcess, str]:
    shared = {"SERVERFLOW_DATABASE_URL": pg_url, "SERVERFLOW_REDIS_URL": redis_server.url()}
    token = owner_token(tmp_path / "a" / "data", shared)
    return (
        ControlPlaneProcess(tmp_path / "a" / "data", env=shared),
        ControlPlaneProcess(tmp_path / "b" / "data", env=shared),
        token,
    )


@pytest.mark.postgres
async def test_two_instances_share_live_events_and_outlive_redis(
    instances: tuple[ControlPlaneProcess, ControlPlaneProcess, str],
    redis_server: RedisServer,
) -> None:
    cp_a, cp_b, token = instances
    cp_a.start()
    try:
        # Instances behind one load balancer share the data directory's secrets.
        shutil.copytree(cp_a.data_dir / "secrets", cp_b.data_dir / "secrets")
        cp_b.start()
        a, b = Instance(cp_a, token), Instance(cp_b, token)
        ids = [(await i.api.get("/healthz")).json()["instance"] for i in (a, b)]
        assert ids[0] != ids[1], ids  # one id per process, in its startup line
        for cp, instance_id in zip((cp_a, cp_b), ids, strict=True):
            assert (
                f"events: Redis redis://127.0.0.1:{redis_server.port}/0, instance {instance_id}"
                in cp.log()
            )
        for instance in (a, b):
            await until(lambda i=instance: _ready(i), "both instances ready")
            assert (await instance.ready())[1]["redis"] == "ok"

        async with live_channel(cp_a.url) as on_a, live_channel(cp_b.url) as on_b:
            # An agent registers with A: the dashboard on B sees it, and so does A's.
            await a.register_agent("web-1")
            frame = await on_b.wait("agent.registered", "web-1")
            assert frame["data"]["hostname"] == "web-1"
            await on_a.wait("agent.registered", "web-1")
            await b.register_agent("web-2")  # and the other way round
            await on_a.wait("agent.registered", "web-2")

            # Redis goes away: neither instance is ready, each still serves its own pages.
            await asyncio.to_thread(redis_server.stop)
            for instance in (a, b):
                status, body = await until(lambda i=instance: _not_ready(i), "not ready")
                assert status == 503 and body["redis"] == "unreachable", body
                assert body["database"] == "ok" and body["redis_error"], body
                assert (await instance.api.get("/healthz")).status_code == 200
            await asyncio.sleep(2)  # long enough for several reconnection attempts
            for name in ("web-3", "web-4", "web-5"):
                await a.register_agent(name)
                await on_a.wait("agent.registered", name)
            await b.register_agent("web-6")
            await on_b.wait("agent.registered", "web-6")
            for part in ("event bus: Redis", "agent routing: Redis"):
                outage = [
                    line
                    for line in cp_a.log().splitlines()
                    if part in line and "is unreachable" in line
                ]
                assert len(outage) == 1, outage  # once per outage, not per event

            # Redis is back on the same port: ready again, events cross again.
            await asyncio.to_thread(redis_server.start)
            for instance in (a, b):
                await until(lambda i=instance: _ready(i), "ready again")
            await a.register_agent("web-7")
            await on_b.wait("agent.registered", "web-7")
            await b.register_agent("web-8")
            await on_a.wait("agent.registered", "web-8")
            assert "reachable again" in cp_a.log() and "reachable again" in cp_b.log()

            # Nothing arrived twice. (B's last event reaching A comes after the echoes of
            # all of A's own, so any duplicate would already be among A's frames.)
            for name in ("web-1", "web-2", "web-3", "web-4", "web-5", "web-7", "web-8"):
                assert on_a.count(name) == 1, (name, on_a.frames)
            await a.register_agent("web-9")
            await on_b.wait("agent.registered", "web-9")
            for name in ("web-1", "web-2", "web-6", "web-7", "web-8", "web-9"):
                assert on_b.count(name) == 1, (name, on_b.frames)
            # What the other instance sent while Redis was away: late if at all, never twice.
            assert on_a.count("web-6") <= 1, on_a.frames
            for name in ("web-3", "web-4", "web-5"):
                assert on_b.count(name) <= 1, (name, on_b.frames)
        for cp in (cp_a, cp_b):
            assert cp.process is not None and cp.process.poll() is None, cp.log()
            assert "Traceback" not in cp.log(), cp.log()
    finally:
        cp_a.stop()
        cp_b.stop()


async def _ready(instance: Instance) -> bool:
    return (await instance.ready())[0] == 200


async def _not_ready(instance: Instance) -> tuple[int, dict[str, Any]] | None:
    answer = await instance.ready()
    return answer if answer[0] == 503 else None
