"""Commands reach an agent through whichever control-plane instance holds its socket.

Two real `serverflow up` processes share the machine's PostgreSQL and a redis-server of
the test's own; nginx balances them (A first, B only while A is down, so the test knows
where the agent lands). A real agent with the test actions connects through nginx.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverflow.errors import TooManyRequests
from serverflow.ratelimit import RedisRateLimiter
from serverflow_agent.identity import load_identity
from serverflow_contract import protocol
from serverflow_testkit import free_port
from serverflow_testkit.browser import RealAgent
from serverflow_testkit.cluster import (
    Instance,
    LoadBalancer,
    owner_token,
    start_instances,
    start_load_balancer,
    until,
)
from serverflow_testkit.controlplane import ControlPlaneProcess
from serverflow_testkit.nginx import world_readable_dir
from serverflow_testkit.protocol_peer import install_agent_plugin
from serverflow_testkit.redis import RedisServer

from .conftest import AGENT_TEST_PLUGIN

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def agent_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_agent_plugin(AGENT_TEST_PLUGIN, tmp_path_factory.getbasetemp())


@dataclass
class Cluster:
    cp_a: ControlPlaneProcess
    cp_b: ControlPlaneProcess
    a: Instance
    b: Instance
    lb: LoadBalancer
    agent: RealAgent
    markers: Path
    server_id: str

    @property
    def public_key(self) -> str:
        return protocol.public_key_of(load_identity(self.agent.state))

    async def run(self, on: Instance, action: str, **params: Any) -> dict[str, Any]:
        answer = await on.api.post(
            f"/api/v1/servers/{self.server_id}/actions/{action}", json={"params": params}
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def status_on(self, instance: Instance) -> str:
        return str((await instance.server("web-1"))["status"])


@pytest.fixture
async def cluster(
    tmp_path: Path, pg_url: str, redis_server: RedisServer, agent_site: Path
) -> AsyncIterator[Cluster]:
    # Agents are told to connect to the load balancer, as behind any real one.
    lb_port = free_port()
    env = {
        "SERVERFLOW_HEARTBEAT_INTERVAL_MS": "500",
        "SERVERFLOW_PUBLIC_URL": f"http://127.0.0.1:{lb_port}",
    }
    token = owner_token(tmp_path / "instance-0" / "data", {
        "SERVERFLOW_DATABASE_URL": pg_url, "SERVERFLOW_REDIS_URL": redis_server.url()
    })  # fmt: skip
    cp_a, cp_b = start_instances(tmp_path, pg_url, redis_server.url(), **env)
    lb = start_load_balancer(world_readable_dir("sf-lb-"), [cp_a], backup=[cp_b], port=lb_port)
    a, b = Instance(cp_a, token), Instance(cp_b, token)
    markers = tmp_path / "markers"
    markers.mkdir()
    agent = RealAgent(
        lb.url,
        await a.new_server("web-1"),
        tmp_path / "agent",
        env={"PYTHONPATH": str(agent_site), "SERVERFLOW_TEST_MARKER_DIR": str(markers)},
    )
    try:
        agent.start()
        server = await until(lambda: _online(b), "the agent online, as B sees it")
        yield Cluster(cp_a, cp_b, a, b, lb, agent, markers, server["id"])
    finally:
        agent.stop()
        for instance in (a, b):
            await instance.close()
        cp_a.stop()
        cp_b.stop()
        lb.stop()
    for cp in (cp_a, cp_b):
        assert "Traceback" not in cp.log(), cp.log()


async def _online(instance: Instance) -> dict[str, Any] | None:
    server = await instance.server("web-1")
    return server if server["status"] == "online" else None


def _verifies(public_key: str, command: dict[str, Any]) -> bool:
    protocol.verify(public_key, "result", command["result_body"], command["result_signature"])
    return True


async def test_a_command_asked_on_one_instance_runs_on_an_agent_held_by_the_other(
    cluster: Cluster,
) -> None:
    a_id, b_id = await cluster.a.instance_id(), await cluster.b.instance_id()
    assert "agent web-1" in cluster.cp_a.log() and "authorized" in cluster.cp_a.log()
    assert "web-1" not in cluster.cp_b.log()  # B never saw its socket
    for on in (cluster.b, cluster.a):  # routed through A, then A's own
        command = await cluster.run(on, "test.echo", value={"asked on": "b", "n": 1})
        assert command["status"] == "ok", command
        assert command["output"] == {"value": {"asked on": "b", "n": 1}}
        stored = (await on.api.get(f"/api/v1/commands/{command['id']}")).json()
        assert stored["status"] == "ok" and _verifies(cluster.public_key, stored)

    # A fan-out from B over "every connected server" finds it too.
    fanned = await cluster.b.api.post("/api/v1/actions/system.info", json={"params": {}})
    assert fanned.status_code == 200, fanned.text
    [only] = fanned.json()["commands"]
    assert only["status"] == "ok" and only["latency_ms"] is not None, only
    # Each command is audited once, by the instance that asked for it.
    audit = (await cluster.b.api.get("/api/v1/audit", params={"action": "agent."})).json()
    ran = [e for e in audit["entries"] if e["action"] == "agent.command"]
    assert len(ran) == 3, ran
    assert (await cluster.b.api.get("/api/v1/audit/verify")).json()["ok"]

    # /metrics, per instance: A holds the agent and relayed B's two commands.
    on_a, on_b = await _metrics(cluster.a), await _metrics(cluster.b)
    assert on_a["serverflow_agents_connected"] == 1 and on_b["serverflow_agents_connected"] == 0
    assert on_a["serverflow_commands_relayed_total"] == 2, on_a
    assert on_b['serverflow_commands_total{status="ok"}'] == 2, on_b
    assert on_b["serverflow_command_latency_seconds_count"] == 2, on_b
    assert on_b[f'serverflow_instance_info{{instance_id="{b_id}",version="0.1.0"}}'] == 1
    assert a_id != b_id
    assert on_b["serverflow_bus_lag_seconds_count"] >= 1  # A's server.online, at least
    assert on_b['serverflow_db_pool_connections{state="size"}'] >= 1
    # Not through the reverse proxy without the metrics token.
    async with httpx.AsyncClient(base_url=cluster.lb.url) as outside:
        refused = await outside.get("/metrics")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "MET001"


async def test_redis_away_each_instance_still_commands_its_own_agents(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(redis_server.stop)
    try:
        await until(
            lambda: _status_is(cluster.b, 503), "B not ready while Redis is away", timeout=20
        )
        own = await cluster.run(cluster.a, "test.echo", value="still here")
        assert own["status"] == "ok", own
        routed = await cluster.run(cluster.b, "test.echo", value="cannot cross")
        assert routed["status"] == "undelivered", routed
        assert "Redis" in routed["message"] and "unreachable" in routed["message"], routed
        assert await cluster.status_on(cluster.b) == "online"  # the database still says so
    finally:
        await asyncio.to_thread(redis_server.start)
    await until(lambda: _status_is(cluster.b, 200), "B ready again")
    await until(lambda: _status_is(cluster.a, 200), "A ready again")

    async def crosses() -> bool:
        return (await cluster.run(cluster.b, "test.echo", value="back"))["status"] == "ok"

    # The routes are renewed within seconds of Redis coming back (it kept nothing).
    await until(crosses, "a command from B reaching A's agent again", timeout=20)
    for cp in (cluster.cp_a, cluster.cp_b):
        assert cp.process is not None and cp.process.poll() is None, cp.log()
    # Every command asked while Redis was away is in the audit trail, chain intact.
    page = (await cluster.b.api.get("/api/v1/audit", params={"action": "agent.command"})).json()
    by_id = {e["details"]["command_id"]: e["outcome"] for e in page["entries"]}
    assert by_id.get(own["id"]) == "ok", page
    assert by_id.get(routed["id"]) == "undelivered", page
    verdict = (await cluster.a.api.get("/api/v1/audit/verify")).json()
    assert verdict["ok"] is True, verdict


async def test_a_result_relayed_while_the_asker_cannot_listen_is_not_lost(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """B asks, A relays; Redis refuses every channel while the agent works (the
    subscribers are cut off, A's reply cannot be published): A stores the signed result
    and B, once it can listen again, finds it there instead of timing out."""
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_server.url())
    asked = asyncio.create_task(cluster.run(cluster.b, "test.sleep", seconds=1))
    try:
        await until(lambda: _started(cluster.markers), "the agent running the command")
        await admin.execute_command("ACL", "SETUSER", "default", "resetchannels")
        await until(lambda: _status_is(cluster.b, 503), "B not ready without its channel")

        async def stored_by_a() -> dict[str, Any] | None:
            listed = await cluster.a.api.get(f"/api/v1/servers/{cluster.server_id}/commands")
            [command] = [c for c in listed.json()["commands"] if c["action"] == "test.sleep"]
            return command if command["status"] == "ok" else None

        stored = await until(stored_by_a, "A storing the result it could not relay")
        assert not asked.done()  # B still waits
        assert _verifies(cluster.public_key, stored)
    finally:
        await admin.execute_command("ACL", "SETUSER", "default", "allchannels")
        await admin.aclose()
    command = await asyncio.wait_for(asked, 20)
    assert command["status"] == "ok" and command["id"] == stored["id"], command
    assert command["output"] == {"slept": 1}
    await until(lambda: _status_is(cluster.b, 200), "B ready again")


async def _started(markers: Path) -> bool:
    return any(markers.glob("sleep-*.json"))


async def _status_is(instance: Instance, status: int) -> bool:
    return (await instance.ready())[0] == status


async def test_killing_the_instance_holding_an_agent_moves_it_and_reports_the_command_in_flight(
    cluster: Cluster,
) -> None:
    asked = asyncio.create_task(cluster.run(cluster.b, "test.sleep", seconds=1.2))
    # The command is running on the agent (its handler leaves a marker when it starts).
    await until(lambda: _exists(cluster.markers, "sleep-*.json"), "the routed command to start")
    assert cluster.cp_a.process is not None
    cluster.cp_a.process.kill()
    cluster.cp_a.process.wait(timeout=10)

    command = await asyncio.wait_for(asked, 60)
    # Reported once, with its real result: the agent kept it while reconnecting and
    # delivered it to B, where its caller waited.
    assert command["status"] == "ok", command
    assert command["output"] == {"slept": 1.2}
    assert _verifies(cluster.public_key, command)
    assert len(list(cluster.markers.glob("sleep-*.json"))) == 1  # it ran once

    await until(lambda: _online(cluster.b), "the agent online on B")
    assert "authorized" in cluster.cp_b.log()
    listed = (await cluster.b.api.get(f"/api/v1/servers/{cluster.server_id}/commands")).json()
    sleeps = [c for c in listed["commands"] if c["action"] == "test.sleep"]
    assert [c["status"] for c in sleeps] == ["ok"], sleeps
    now = await cluster.run(cluster.b, "test.echo", value="on B now")
    assert now["status"] == "ok", now
    # And the agent stays online: A's death did not mark it offline after it moved.
    await asyncio.sleep(0)
    assert await cluster.status_on(cluster.b) == "online"


async def _exists(directory: Path, pattern: str) -> bool:
    return any(directory.glob(pattern))


async def _metrics(instance: Instance) -> dict[str, float]:
    """The samples of /metrics, asked directly (from this machine, no proxy)."""
    answer = await instance.api.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for line in answer.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# -- state shared between instances --------------------------------------------------------


async def test_a_caller_gets_the_rate_limit_once_across_instances(
    redis_server: RedisServer,
) -> None:
    a = RedisRateLimiter(redis_server.url(), "api", per_minute=10)
    b = RedisRateLimiter(redis_server.url(), "api", per_minute=10)
    other_deployment = RedisRateLimiter(redis_server.url(4), "api", per_minute=10)
    try:
        for limiter in (a, b) * 5:  # ten calls, half on each instance
            await limiter.check("token:t1")
        for limiter in (a, b):
            with pytest.raises(TooManyRequests) as refused:
                await limiter.check("token:t1")
            assert refused.value.code == "RATE001" and refused.value.retry_after >= 1
        await a.check("token:t2")  # another caller has its own bucket
        await other_deployment.check("token:t1")  # another database, another deployment

        # Redis away: each instance limits on its own meanwhile, and refuses nobody for it.
        await asyncio.to_thread(redis_server.stop)
        for _ in range(10):
            await a.check("token:t3")
        with pytest.raises(TooManyRequests):
            await a.check("token:t3")
    finally:
        for limiter in (a, b, other_deployment):
            await limiter.close()
