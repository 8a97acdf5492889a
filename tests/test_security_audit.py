"""Every security refusal lands in the audit log with its actor, source address and code,
in the organisation's chain when one can be named and in the instance's otherwise; floods
add a bounded number of entries; `serverflow audit verify` passes afterwards.

Driven against a real `serverflow up` process with protocol-level agent peers
(bench/simagent.py), as tests/test_channel.py does.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.simagent import SimAgent, register
from serverflow import audit
from serverflow.models import Role
from serverflow.tenancy import scoped
from serverflow_contract import protocol
from serverflow_testkit import wait_for
from serverflow_testkit.controlplane import Deployment, bootstrap, run_cli
from tests.conftest import ControlPlaneUnderTest, control_plane_with, sign_in

WINDOW_S = 1.0  # the refusal-aggregation window of this control plane
FLOOD = 10_000


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = tmp_path_factory.mktemp("security-audit") / "data"
    dep = bootstrap(data, env={"SERVERFLOW_AUDIT_REFUSAL_WINDOW_S": str(WINDOW_S)})
    yield dep
    dep.cp.stop()


_names = iter(range(10_000))


def new_server(dep: Deployment) -> dict[str, Any]:
    with dep.http() as http:
        made = http.post("/servers", json={"name": f"sec-{next(_names)}"})
    assert made.status_code == 201, made.text
    return dict(made.json())


def enrolled(dep: Deployment) -> SimAgent:
    server = new_server(dep)
    key = protocol.new_signing_key()
    answer = register(dep.url, server["install"]["token"], key)
    return SimAgent(
        answer["ws_url"], answer["server_id"], answer["org_id"], key, answer["control_plane_key"]
    )


def entries(dep: Deployment, action: str, instance: bool = False) -> list[dict[str, Any]]:
    """Audit entries whose action starts with `action`, newest first (all pages)."""
    path, role = ("/instance/audit", "operator") if instance else ("/audit", "owner")
    found: list[dict[str, Any]] = []
    before = None
    with dep.http(role) as http:
        while True:
            params: dict[str, Any] = {"action": action, "limit": 500}
            if before:
                params["before"] = before
            page = http.get(path, params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            found += body["entries"]
            before = body["next_before"]
            if before is None:
                return found


def one(dep: Deployment, action: str, instance: bool = False, **match: Any) -> dict[str, Any]:
    """Wait for the entry of `action` whose fields (or details) match, and return it."""

    def find() -> dict[str, Any] | None:
        for entry in entries(dep, action, instance):
            fields = {**entry, **entry["details"]}
            if all(fields.get(k) == v for k, v in match.items()):
                return entry
        return None

    found: dict[str, Any] = wait_for(find, timeout=15, what=f"{action} {match}")
    return found


def counted(found: list[dict[str, Any]]) -> int:
    """How many refusals these entries stand for: a first one is one, a summary says."""
    return sum(e["details"].get("repeated", 1) for e in found)


async def refused(agent: SimAgent, code: str) -> None:
    frame = await agent.recv()
    assert frame.type == "error" and frame.body["code"] == code, frame
    with pytest.raises(ConnectionClosed):
        await agent.recv()


def test_agent_registrations_accepted_and_refused(deployment: Deployment) -> None:
    server = new_server(deployment)
    token = server["install"]["token"]
    register(deployment.url, token, protocol.new_signing_key())
    accepted = one(deployment, "agent.registered", target=f"server:{server['name']}")
    assert accepted["actor"] == f"agent:{server['id']}"
    assert accepted["details"]["source"] == "127.0.0.1" and accepted["outcome"] == "ok"

    with pytest.raises(Exception, match="401"):
        register(deployment.url, token, protocol.new_signing_key())  # used already
    used = one(
        deployment,
        "agent.registration_refused",
        instance=True,
        reason="unknown or already used token",
    )
    assert (used["actor"], used["outcome"], used["details"]["source"]) == (
        "anonymous",
        "INS001",
        "127.0.0.1",
    )
    assert token not in json.dumps(used)

    expired = new_server(deployment)
    db = sqlite3.connect(deployment.cp.data_dir / "serverflow.sqlite3")
    db.execute(
        "UPDATE servers SET install_token_expires_at = '2001-01-01 00:00:00+00:00' WHERE id = ?",
        (expired["id"],),
    )
    db.commit()
    with pytest.raises(Exception, match="401"):
        register(deployment.url, expired["install"]["token"], protocol.new_signing_key())
    one(deployment, "agent.registration_refused", instance=True, reason="expired token")
    with pytest.raises(Exception, match="401"):
        register(deployment.url, "sfi_nothex_x", protocol.new_signing_key())
    one(deployment, "agent.registration_refused", instance=True, reason="malformed token")


async def test_handshake_failures(deployment: Deployment) -> None:
    # A server nobody registered: no organisation to tell, so the instance's chain.
    ghost = enrolled(deployment)
    ghost.server_id = str(uuid.uuid4())
    await ghost.connect()
    await refused(ghost, "AUT001")
    claimed = f"{ghost.org_id}/{ghost.server_id}"
    entry = await asyncio.to_thread(
        one, deployment, "agent.handshake_refused", True, claimed=claimed
    )
    assert (entry["outcome"], entry["actor"]) == ("AUT001", "agent:unknown")
    assert entry["details"]["source"] == "127.0.0.1"

    # Someone presenting another key for a real server: that server's organisation.
    a, b = enrolled(deployment), enrolled(deployment)
    impostor = SimAgent(b.ws_url, b.server_id, b.org_id, a.key, a.control_plane_key)
    await impostor.connect()
    await refused(impostor, "AUT002")
    entry = await asyncio.to_thread(
        one, deployment, "agent.handshake_refused", target=f"server:{b.server_id}"
    )
    assert (entry["outcome"], entry["actor"]) == ("AUT002", f"agent:{b.server_id}")

    # The right key claimed, the challenge signed with another.
    c = enrolled(deployment)
    await c.connect()
    challenge = await c.recv()
    forged = {
        "server_id": c.server_id,
        "session_id": challenge.body["session_id"],
        "nonce": challenge.body["nonce"],
        "actions": [],
    }
    await c.send(protocol.make_frame("auth", forged, protocol.new_signing_key()))
    await refused(c, "AUT003")
    entry = await asyncio.to_thread(
        one, deployment, "agent.handshake_refused", target=f"server:{c.server_id}"
    )
    assert entry["outcome"] == "AUT003"


async def test_frames_naming_another_server_and_forged_results(deployment: Deployment) -> None:
    agent, other = enrolled(deployment), enrolled(deployment)
    await agent.handshake()
    beat = {"server_id": other.server_id, "seq": 1, "sent_at": protocol.now_ms(), "metrics": {}}
    await agent.send(protocol.make_frame("heartbeat", beat, agent.key))
    await refused(agent, "CMD002")
    entry = await asyncio.to_thread(
        one, deployment, "agent.session_closed", target=f"server:{agent.server_id}"
    )
    assert (entry["outcome"], entry["actor"]) == ("CMD002", f"agent:{agent.server_id}")

    forger = enrolled(deployment)
    await forger.handshake()
    result = {
        "command_id": str(uuid.uuid4()),
        "server_id": forger.server_id,
        "status": "ok",
        "started_at": 1,
        "finished_at": 2,
    }
    await forger.send(protocol.make_frame("result", result, protocol.new_signing_key()))
    await refused(forger, "SIG001")
    entry = await asyncio.to_thread(
        one, deployment, "agent.session_closed", target=f"server:{forger.server_id}"
    )
    assert entry["outcome"] == "SIG001" and entry["details"]["source"] == "127.0.0.1"


async def test_unknown_results_and_refusals_reported_by_agents(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.handshake()
    # A validly signed result for a command nobody sent.
    stray = str(uuid.uuid4())
    result = {
        "command_id": stray,
        "server_id": agent.server_id,
        "status": "ok",
        "started_at": 1,
        "finished_at": 2,
    }
    await agent.send(protocol.make_frame("result", result, agent.key))
    entry = await asyncio.to_thread(one, deployment, "agent.result_refused", command_id=stray)
    assert entry["outcome"] == "CMD404" and entry["actor"] == f"agent:{agent.server_id}"

    # The agent refuses a command because its signature does not verify (as it would a
    # forged one): the organisation hears of it.
    async def refuse(sim: SimAgent, command: protocol.Frame) -> None:
        await sim.result_for(command, "refused", code="SIG001", message="bad signature")

    agent.on_command = refuse
    serving = asyncio.create_task(agent.serve())
    async with httpx.AsyncClient(
        base_url=deployment.url + "/api/v1",
        headers={"Authorization": f"Bearer {deployment.tokens['owner']}"},
        timeout=60,
    ) as http:
        ran = await http.post(f"/servers/{agent.server_id}/actions/sim.echo", json={"params": {}})
    assert ran.json()["status"] == "refused", ran.json()
    entry = await asyncio.to_thread(
        one, deployment, "agent.command_refused", command_id=ran.json()["id"]
    )
    assert entry["outcome"] == "SIG001" and entry["details"]["reason"] == "bad signature"
    await agent.close()
    await asyncio.wait_for(serving, 10)


async def test_a_flood_of_refused_handshakes_adds_a_bounded_number_of_entries(
    deployment: Deployment,
) -> None:
    ws_url = deployment.url.replace("http", "ws", 1) + "/agent/ws"
    org_id = str(uuid.uuid4())
    hello = protocol.make_frame(
        "hello",
        {
            "server_id": str(uuid.uuid4()),
            "org_id": org_id,
            "public_key": protocol.public_key_of(protocol.new_signing_key()),
            "control_plane_key": "A" * 43,
            "agent_version": "flood",
            "protocol": protocol.PROTOCOL_VERSION,
        },
    ).encode()
    before = len(entries(deployment, "agent.handshake_refused", instance=True))
    codes: dict[str, int] = {}

    async def knock(n: int) -> None:
        for _ in range(n):
            async with connect(ws_url, open_timeout=30, ping_interval=None) as ws:
                await ws.send(hello)
                frame = protocol.parse_frame(await ws.recv())
                codes[frame.body["code"]] = codes.get(frame.body["code"], 0) + 1
                with pytest.raises(ConnectionClosed):
                    await ws.recv()

    started = time.monotonic()
    await asyncio.gather(*(knock(FLOOD // 50) for _ in range(50)))
    elapsed = time.monotonic() - started
    assert codes == {"AUT001": FLOOD}

    def flood_entries() -> list[dict[str, Any]] | None:
        found = [
            e
            for e in entries(deployment, "agent.handshake_refused", instance=True)
            if e["details"].get("claimed", "").startswith(org_id)
        ]
        # Done once the last window's summary is in (counted as `counted` does: a
        # summary stands for its repeats, the first of a kind for itself).
        return found if counted(found) >= FLOOD else None

    found = await asyncio.to_thread(wait_for, flood_entries, 30, "every refusal counted in the log")
    # Every refusal is counted, none twice, and the log grew by about two entries per
    # aggregation window the flood lasted: bounded by time, not by the flood's size.
    assert counted(found) == FLOOD
    windows = elapsed / WINDOW_S + 2
    added = len(entries(deployment, "agent.handshake_refused", instance=True)) - before
    assert added <= 2 * windows, (added, elapsed)
    print(f"{FLOOD} refused handshakes in {elapsed:.1f} s -> {added} audit entries")


def test_audit_verify_passes_after_all_this(deployment: Deployment) -> None:
    proc = run_cli("audit", "verify", env=deployment.cp.env)
    assert "ok      instance:" in proc.stdout, proc.stdout
    assert "BROKEN" not in proc.stdout + proc.stderr


# -- refusals of people and their tokens (in-process control plane) --------------------


async def instance_chain(action: str) -> list[Any]:
    return [e for e in await audit.page(chain=audit.INSTANCE, limit=500) if e.action == action]


async def test_sign_in_failures_and_throttling(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    for _ in range(control_plane.settings.login_max_failures + 1):  # the last one must wait
        page = await (await client.get("/login")).get_data(as_text=True)
        csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        await client.post(
            "/login", form={"csrf_token": csrf, "email": tenant.owner.email, "password": "nope"}
        )
    failed = await instance_chain("auth.sign_in_failed")
    assert failed and failed[0].outcome == "AUTH003"
    assert failed[0].actor == f"user:{tenant.owner.email}" and failed[0].details["source"]
    assert "nope" not in str([e.details for e in failed])
    throttled = await instance_chain("auth.sign_in_throttled")
    assert throttled and throttled[0].outcome == "AUTH005"


async def test_csrf_rate_limit_and_unknown_token_refusals(db_url: str, tmp_path: Path) -> None:
    async with control_plane_with(db_url, tmp_path, api_rate_per_minute=5) as cp:
        tenant = await cp.tenant("Acme")
        client = cp.client()

        await sign_in(client, tenant.owner.email)
        missing = await client.post("/api/v1/servers", json={"name": "x"})  # no CSRF header
        assert (await missing.get_json())["error"]["code"] == "AUTH006"
        form = await client.post("/settings/language", form={"locale": "fr"})  # no token
        assert form.status_code == 403
        async with scoped(tenant.org.id):
            csrf = await audit.page(action="auth.csrf_refused")
        assert {(e.actor, e.target) for e in csrf} == {
            (f"user:{tenant.owner.email}", "POST /api/v1/servers"),
            (f"user:{tenant.owner.email}", "POST /settings/language"),
        }
        assert all(e.details["source"] and e.outcome == "AUTH006" for e in csrf)

        viewer = tenant.auth(Role.VIEWER)
        answers = [
            (await client.get("/api/v1/servers", headers=viewer)).status_code for _ in range(9)
        ]
        assert answers.count(429) >= 4
        forged = {"Authorization": "Bearer sf_" + "0" * 32 + "_" + "x" * 43}
        for _ in range(2):
            assert (await client.get("/api/v1/servers", headers=forged)).status_code == 401
        mcp = await client.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=forged
        )
        assert mcp.status_code == 401
        await cp.app.extensions["serverflow"].refusals.flush()

        async with scoped(tenant.org.id):
            limited = await audit.page(action="api.rate_limited")
        assert {e.actor for e in limited} == {"token:viewer-token"}
        assert counted([{"details": e.details} for e in limited]) == answers.count(429)
        assert len(limited) == 2  # the first, then one entry counting the rest
        tokens = await instance_chain("auth.token_refused")
        by_target: dict[str, int] = {}
        for e in tokens:
            by_target[e.target] = by_target.get(e.target, 0) + counted([{"details": e.details}])
        assert by_target == {"GET /api/v1/servers": 2, "POST /mcp": 1}
        assert all(e.actor == "anonymous" and e.outcome == "AUTH002" for e in tokens)
        for chain in (audit.INSTANCE, tenant.org.id):
            assert (await audit.verify(chain)).ok


async def test_a_distributed_flood_is_bounded_too(control_plane: ControlPlaneUnderTest) -> None:
    from serverflow.refusals import RefusalLog

    now = [1000.0]
    log = RefusalLog(clock=lambda: now[0], window_s=60, max_kinds=10)
    for _minute in range(3):  # 1,000 addresses a minute, three minutes
        for n in range(1000):
            await log.note(
                audit.INSTANCE, "test.flood", "AUT001", actor="anonymous", source=f"10.0.{n}.1"
            )
        now[0] += 61
    await log.flush()
    rows = await instance_chain("test.flood")
    assert counted([{"details": e.details} for e in rows]) == 3000
    # Per minute: 10 kinds written as they came, then the rest counted under one "*" kind.
    assert len(rows) <= 3 * (10 + 2), len(rows)
    assert any(e.actor == "*" and e.details["repeated"] > 900 for e in rows)
