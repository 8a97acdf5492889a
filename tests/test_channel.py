"""The control plane's side of the agent channel, driven by protocol-level agent peers.

The peers (bench/simagent.py) speak the real protocol with real signatures against a real
`serverflow up` process; tests/test_agent_*.py cover the real agent process.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from bench.simagent import SimAgent, register
from serverflow_contract import protocol
from serverflow_testkit import wait_for
from serverflow_testkit.cluster import until
from serverflow_testkit.controlplane import Deployment, bootstrap

INTERVAL_MS = 400


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = tmp_path_factory.mktemp("channel") / "data"
    dep = bootstrap(data, env={"SERVERFLOW_HEARTBEAT_INTERVAL_MS": str(INTERVAL_MS)})
    yield dep
    dep.cp.stop()


_names = iter(range(10_000))


def new_server(dep: Deployment, mode: str = "full") -> dict[str, Any]:
    with dep.http() as http:
        made = http.post("/servers", json={"name": f"srv-{next(_names)}", "security_mode": mode})
    assert made.status_code == 201, made.text
    return dict(made.json())


def enrolled(
    dep: Deployment, mode: str = "full", actions: list[dict[str, Any]] | None = None
) -> SimAgent:
    server = new_server(dep, mode)
    key = protocol.new_signing_key()
    answer = register(dep.url, server["install"]["token"], key)
    agent = SimAgent(
        answer["ws_url"], answer["server_id"], answer["org_id"], key, answer["control_plane_key"]
    )
    if actions is not None:
        agent.actions = actions
    return agent


def server_state(dep: Deployment, server_id: str) -> dict[str, Any]:
    with dep.http() as http:
        return dict(http.get(f"/servers/{server_id}").json())


async def api(
    dep: Deployment, method: str, path: str, role: str = "owner", **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=dep.url + "/api/v1",
        timeout=60,
        headers={"Authorization": f"Bearer {dep.tokens[role]}"},
    ) as c:
        return await c.request(method, path, **kwargs)


async def test_register_handshake_command_and_signed_result(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.handshake()
    assert agent.registry == ["sim.echo"]
    serving = asyncio.create_task(agent.serve())
    try:
        state = server_state(deployment, agent.server_id)
        assert state["status"] == "online" and state["registered_at"]
        ran = await api(
            deployment,
            "POST",
            f"/servers/{agent.server_id}/actions/sim.echo",
            json={"params": {"word": "hello"}},
        )
        assert ran.status_code == 200, ran.text
        result = ran.json()
        assert result["status"] == "ok" and result["output"] == {"echo": {"word": "hello"}}
        # The command the agent received was signed by the key it pinned at registration.
        command = next(f for f in agent.received if f.type == "command")
        protocol.verify(agent.control_plane_key, "command", command.body, command.sig)
        assert command.body["id"] == result["id"]
        assert result["signing_key_id"] == protocol.key_id(agent.control_plane_key)
        stored = (await api(deployment, "GET", f"/commands/{result['id']}")).json()
        assert stored["status"] == "ok" and stored["issued_by"] == "token:owner"
        events = (await api(deployment, "GET", "/events")).json()["events"]
        kinds = {(e["kind"], e["server_id"]) for e in events}
        assert ("agent.registered", agent.server_id) in kinds
        assert ("server.online", agent.server_id) in kinds
    finally:
        serving.cancel()
        await agent.close()
    wait_for(
        lambda: server_state(deployment, agent.server_id)["status"] == "offline",
        what="offline after disconnect",
    )


async def test_results_are_stored_with_the_agents_signature(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.handshake()
    serving = asyncio.create_task(agent.serve())
    try:
        ran = (
            await api(
                deployment,
                "POST",
                f"/servers/{agent.server_id}/actions/sim.echo",
                json={"params": {}},
            )
        ).json()
    finally:
        serving.cancel()
        await agent.close()
    db = sqlite3.connect(deployment.cp.data_dir / "serverflow.sqlite3")
    row = db.execute(
        "SELECT status, output, result_signature FROM commands WHERE id = ?", (ran["id"],)
    ).fetchone()
    assert row[0] == "ok" and row[2]
    assert json.loads(row[1]) == {"echo": {}}


def test_install_token_works_once(deployment: Deployment) -> None:
    server = new_server(deployment)
    token = server["install"]["token"]
    register(deployment.url, token, protocol.new_signing_key())
    with pytest.raises(Exception, match="401") as err:
        register(deployment.url, token, protocol.new_signing_key())
    body = json.loads(err.value.read())  # type: ignore[attr-defined]
    assert body["error"]["code"] == "INS001"
    assert token not in deployment.cp.log()


def test_expired_and_forged_install_tokens(deployment: Deployment) -> None:
    server = new_server(deployment)
    db = sqlite3.connect(deployment.cp.data_dir / "serverflow.sqlite3")
    db.execute(
        "UPDATE servers SET install_token_expires_at = '2001-01-01 00:00:00+00:00' WHERE id = ?",
        (server["id"],),
    )
    db.commit()
    for token in (
        server["install"]["token"],
        "sfi_nothex_x",
        deployment.tokens["owner"],
        "sfi_" + "0" * 32 + "_" + "A" * 43,
    ):
        with pytest.raises(Exception, match="401"):
            register(deployment.url, token, protocol.new_signing_key())
    assert server_state(deployment, server["id"])["registered_at"] is None


def close_code_for(code: str) -> int:
    """The WebSocket close code docs/protocol.md §2 gives for an error frame's code."""
    return {"FRM001": 1009, "AUT006": 1013}.get(code, 1008)


async def expect_refusal(agent: SimAgent, code: str) -> None:
    frame = await agent.recv()
    assert frame.type == "error" and frame.body["code"] == code, frame
    with pytest.raises(ConnectionClosed):
        await agent.recv()
    assert agent.ws is not None
    assert agent.ws.close_code == close_code_for(code), (agent.ws.close_code, code)


async def test_agent_presenting_another_agents_key_is_refused(deployment: Deployment) -> None:
    a, b = enrolled(deployment), enrolled(deployment)
    # B's server id, A's public key (A does hold the private key for it).
    impostor = SimAgent(b.ws_url, b.server_id, b.org_id, a.key, a.control_plane_key)
    await impostor.connect()
    await expect_refusal(impostor, "AUT002")
    assert server_state(deployment, b.server_id)["status"] != "online"


async def test_handshake_signed_with_the_wrong_key_is_refused(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.connect()
    challenge = await agent.recv()
    forged = protocol.make_frame(
        "auth",
        {
            "server_id": agent.server_id,
            "session_id": challenge.body["session_id"],
            "nonce": challenge.body["nonce"],
            "actions": [],
        },
        protocol.new_signing_key(),
    )
    await agent.send(forged)
    await expect_refusal(agent, "AUT003")


async def test_replayed_handshake_answer_is_refused(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.connect()
    first = await agent.recv()
    auth = protocol.make_frame(
        "auth",
        {
            "server_id": agent.server_id,
            "session_id": first.body["session_id"],
            "nonce": first.body["nonce"],
            "actions": [],
        },
        agent.key,
    )
    await agent.close()
    await agent.connect()
    await agent.recv()  # a new challenge; answer it with the old (validly signed) response
    await agent.send(auth)
    await expect_refusal(agent, "AUT003")


async def test_unknown_server_is_refused(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    agent.server_id = "9c6f3c1e-0000-4000-8000-000000000000"
    await agent.connect()
    await expect_refusal(agent, "AUT001")


BAD_FRAMES = [
    ("not JSON", "{nope", "FRM002"),
    ("JSON array", "[1, 2]", "FRM002"),
    ("duplicate keys", '{"type": "hello", "type": "auth", "body": {}}', "FRM002"),
    ("unknown type", '{"type": "shell", "body": {"cmd": "rm -rf /"}}', "FRM003"),
    ("wrong field type", '{"type": "hello", "body": {"server_id": 5}}', "FRM004"),
    ("oversized", '{"type": "hello", "body": {"x": "' + "a" * (1024 * 1024 + 10) + '"}}', "FRM001"),
]


@pytest.mark.parametrize(("label", "data", "code"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
async def test_malformed_frames_close_the_connection(
    deployment: Deployment, label: str, data: str, code: str
) -> None:
    agent = enrolled(deployment)
    await agent.handshake()
    await agent.send(data)
    await expect_refusal(agent, code)
    assert httpx.get(deployment.url + "/healthz").status_code == 200
    # The control plane still serves the next (well-behaved) agent.
    again = enrolled(deployment)
    await again.handshake()
    await again.close()


async def test_oversized_first_frame_is_refused_with_1009(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.connect()
    await agent.recv()  # the challenge
    await agent.send('{"type": "auth", "body": {"x": "' + "a" * protocol.MAX_FRAME_BYTES + '"}}')
    await expect_refusal(agent, "FRM001")


async def test_huge_frame_is_cut_off_by_the_transport(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.handshake()
    await agent.send("x" * (2 * protocol.MAX_FRAME_BYTES + 1))
    with pytest.raises(ConnectionClosed) as closed:
        await agent.recv()  # no error frame: the transport closes before the frame is read
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009, closed.value
    assert httpx.get(deployment.url + "/healthz").status_code == 200


async def test_binary_frames_are_refused(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.connect()
    await agent.recv()
    assert agent.ws is not None
    await agent.ws.send(b"\x00\x01binary")
    await expect_refusal(agent, "FRM002")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=100).map(repr),
        st.dictionaries(st.text(max_size=10), st.integers()).map(json.dumps),
    )
)
def test_random_first_frames_never_hurt_the_control_plane(
    deployment: Deployment, data: str
) -> None:
    async def go() -> str:
        agent = SimAgent(
            deployment.url.replace("http", "ws") + "/agent/ws",
            "x",
            "y",
            protocol.new_signing_key(),
            "z",
        )
        from websockets.asyncio.client import connect

        async with connect(agent.ws_url) as ws:
            await ws.send(data)
            reply = protocol.parse_frame(await asyncio.wait_for(ws.recv(), 10))
            return str(reply.body["code"])

    code = asyncio.run(go())
    assert code[:3] in {"FRM", "AUT"}
    assert httpx.get(deployment.url + "/healthz").status_code == 200


async def test_results_with_bad_signatures_close_the_session(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.handshake()

    async def forge(sim: SimAgent, command: protocol.Frame) -> None:
        body = {
            "command_id": command.body["id"],
            "server_id": sim.server_id,
            "status": "ok",
            "started_at": 1,
            "finished_at": 2,
            "output": "forged",
        }
        await sim.send(protocol.make_frame("result", body, protocol.new_signing_key()))

    agent.on_command = forge
    serving = asyncio.create_task(agent.serve())
    ran = await api(
        deployment, "POST", f"/servers/{agent.server_id}/actions/sim.echo", json={"params": {}}
    )
    await asyncio.wait_for(serving, 10)  # the control plane closed the socket
    assert ran.json()["status"] == "undelivered", ran.json()
    stored = (await api(deployment, "GET", f"/commands/{ran.json()['id']}")).json()
    assert stored["output"] is None and stored["status"] == "undelivered"
    assert "SIG001" in deployment.cp.log()


async def test_heartbeats_are_stored_and_silence_means_offline(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.handshake()
    assert agent.heartbeat_interval_ms == INTERVAL_MS
    for n in range(3):
        await agent.heartbeat({"cpu_percent": 10.0 + n, "memory": {"percent": 50.0}})
    beats = await asyncio.to_thread(
        wait_for,
        lambda: (
            len(server_state(deployment, agent.server_id)["metrics"] or {})
            and (
                httpx.get(
                    f"{deployment.url}/api/v1/servers/{agent.server_id}/heartbeats",
                    headers={"Authorization": f"Bearer {deployment.tokens['viewer']}"},
                ).json()["heartbeats"]
            )
        ),
        10,
        "heartbeats stored",
    )
    assert [b["metrics"]["cpu_percent"] for b in beats][:3] == [12.0, 11.0, 10.0]
    # Now the agent goes silent without closing: offline after the missed heartbeats.
    await asyncio.to_thread(
        wait_for,
        lambda: server_state(deployment, agent.server_id)["status"] == "offline",
        10,
        "offline",
    )
    events = (await api(deployment, "GET", "/events")).json()["events"]
    assert any(e["kind"] == "server.offline" and e["server_id"] == agent.server_id for e in events)
    await agent.close()


async def test_security_mode_limits_actions(deployment: Deployment) -> None:
    change = {
        **SimAgent.__dataclass_fields__["actions"].default_factory()[0],  # type: ignore[misc]
        "name": "sim.write",
        "kind": "change",
    }
    agent = enrolled(
        deployment,
        mode="read-only",
        actions=[change, {**change, "name": "sim.look", "kind": "read"}],
    )
    await agent.handshake()
    assert agent.registry == ["sim.look"]
    serving = asyncio.create_task(agent.serve())
    try:
        refused = await api(
            deployment, "POST", f"/servers/{agent.server_id}/actions/sim.write", json={"params": {}}
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "ACT002"
        # Viewers may run read actions, not change them.
        assert (
            await api(
                deployment,
                "POST",
                f"/servers/{agent.server_id}/actions/sim.look",
                role="viewer",
                json={"params": {}},
            )
        ).json()["status"] == "ok"
        relaxed = await api(
            deployment, "PATCH", f"/servers/{agent.server_id}", json={"security_mode": "standard"}
        )
        assert relaxed.status_code == 200
        await asyncio.to_thread(
            wait_for,
            lambda: any(
                f.type == "registry" and "sim.write" in f.body["actions"] for f in agent.received
            ),
            10,
            "new registry",
        )
        member = await api(
            deployment,
            "POST",
            f"/servers/{agent.server_id}/actions/sim.write",
            role="member",
            json={"params": {}},
        )
        assert member.json()["status"] == "ok"
        viewer = await api(
            deployment,
            "POST",
            f"/servers/{agent.server_id}/actions/sim.write",
            role="viewer",
            json={"params": {}},
        )
        assert viewer.status_code == 403
        unknown = await api(
            deployment, "POST", f"/servers/{agent.server_id}/actions/sim.nope", json={"params": {}}
        )
        assert unknown.json()["error"]["code"] == "ACT001"
    finally:
        serving.cancel()
        await agent.close()


async def test_params_are_checked_before_signing(deployment: Deployment) -> None:
    strict = {
        "name": "sim.strict",
        "kind": "read",
        "description": "",
        "timeout": 5,
        "memory_limit_mb": 64,
        "params_schema": {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "additionalProperties": False,
        },
    }
    agent = enrolled(deployment, actions=[strict])
    await agent.handshake()
    bad = await api(
        deployment,
        "POST",
        f"/servers/{agent.server_id}/actions/sim.strict",
        json={"params": {"n": "five"}},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "ACT003"
    assert not any(f.type == "command" for f in agent.received)
    offline = enrolled(deployment)
    not_connected = await api(
        deployment, "POST", f"/servers/{offline.server_id}/actions/sim.echo", json={}
    )
    assert not_connected.json()["error"]["code"] in {"ACT001", "AGT001"}
    await agent.close()


async def test_agent_key_rotation(deployment: Deployment) -> None:
    agent = enrolled(deployment)
    await agent.handshake()
    new = protocol.new_signing_key()
    issued = protocol.now_ms()
    proof = protocol.sign(
        new,
        "agent_key_proof",
        {
            "server_id": agent.server_id,
            "new_public_key": protocol.public_key_of(new),
            "issued_at": issued,
        },
    )
    await agent.send(
        protocol.make_frame(
            "agent_key",
            {
                "server_id": agent.server_id,
                "old_public_key": agent.public_key,
                "new_public_key": protocol.public_key_of(new),
                "issued_at": issued,
                "proof": proof,
            },
            agent.key,
        )
    )
    accepted = await agent.recv()
    assert accepted.type == "agent_key_accepted"
    protocol.verify(agent.control_plane_key, accepted.type, accepted.body, accepted.sig)
    await agent.close()
    old_key, agent.key = agent.key, new
    await agent.handshake()  # the new key is the server's key now
    await agent.close()
    agent.key = old_key
    await agent.connect()
    await expect_refusal(agent, "AUT002")


async def test_control_plane_key_rotation(deployment: Deployment) -> None:
    online, offline = enrolled(deployment), enrolled(deployment)
    await online.handshake()
    serving = asyncio.create_task(online.serve())
    old_key = online.control_plane_key
    try:
        # In a thread: a blocking call here would stop the agent's heartbeats meanwhile.
        await asyncio.to_thread(deployment.cli, "keys", "rotate")
        await asyncio.to_thread(
            wait_for, lambda: online.control_plane_key != old_key, 10, "rotation announced"
        )
        ran = (
            await api(
                deployment,
                "POST",
                f"/servers/{online.server_id}/actions/sim.echo",
                json={"params": {}},
            )
        ).json()
        assert ran["status"] == "ok"  # SimAgent verified the command with the new key
        assert ran["signing_key_id"] == protocol.key_id(online.control_plane_key)
    finally:
        serving.cancel()
        await online.close()
    # An agent that slept through the rotation gets the announcement chain first.
    assert offline.control_plane_key == old_key
    await offline.handshake()
    assert offline.control_plane_key == online.control_plane_key
    await offline.close()


async def test_fan_out_to_many_agents(deployment: Deployment) -> None:
    agents = [enrolled(deployment) for _ in range(5)]
    sleeper = enrolled(deployment)  # registered, never connects
    for agent in agents:
        await agent.handshake()
    serving = [asyncio.create_task(a.serve()) for a in agents]
    try:
        ids = [a.server_id for a in agents] + [sleeper.server_id]
        ran = await api(
            deployment, "POST", "/actions/sim.echo", json={"servers": ids[:-1], "params": {"n": 1}}
        )
        assert ran.status_code == 200, ran.text
        commands = ran.json()["commands"]
        assert sorted(c["server_id"] for c in commands) == sorted(ids[:-1])
        assert all(c["status"] == "ok" and c["output"] == {"echo": {"n": 1}} for c in commands)
        assert all(c["latency_ms"] is not None and c["latency_ms"] >= 0 for c in commands)
        # Every result was stored, each with its own signature.
        for command in commands:
            stored = (await api(deployment, "GET", f"/commands/{command['id']}")).json()
            assert stored["status"] == "ok"
        # A server that is not connected: its command is recorded as undelivered.
        partial = (
            await api(
                deployment,
                "POST",
                "/actions/sim.echo",
                json={"servers": [ids[0], sleeper.server_id]},
            )
        ).json()["commands"]
        by_server = {c["server_id"]: c["status"] for c in partial}
        assert by_server == {ids[0]: "ok", sleeper.server_id: "undelivered"}
        # Viewers may fan out read actions; unknown servers are a clear 404.
        missing = await api(
            deployment,
            "POST",
            "/actions/sim.echo",
            json={"servers": ["9c6f3c1e-0000-4000-8000-000000000000"]},
        )
        assert missing.json()["error"]["code"] == "SRV001"
    finally:
        for task in serving:
            task.cancel()
        for agent in agents:
            await agent.close()


def test_a_connection_beyond_the_handshakes_at_once_is_told_to_retry_later(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """AGENT_HANDSHAKES_MAX=2: a third agent connecting while two handshakes are under way
    waits for a slot, gets AUT006 (close 1013) when none frees in time (not audited); one
    that waits while a slot frees gets in."""
    data = tmp_path_factory.mktemp("busy") / "data"
    dep = bootstrap(data, env={"SERVERFLOW_AGENT_HANDSHAKES_MAX": "2"})
    try:
        asyncio.run(_busy(dep))
        log = dep.cp.log()
        assert "1 agent connection(s) told to retry later" in log, log
        assert "Traceback" not in log, log
    finally:
        dep.cp.stop()


async def _busy(dep: Deployment) -> None:
    stalled = [enrolled(dep), enrolled(dep)]
    for agent in stalled:
        await agent.connect()
        assert (await agent.recv()).type == "challenge"  # and no answer yet
    third = enrolled(dep)
    waited = time.monotonic()
    try:
        await third.connect()  # the WebSocket is accepted when the wait ends
        await expect_refusal(third, "AUT006")
    except ConnectionClosed as closed:  # refused before its hello went out
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (
            1013,
            "AUT006",
        ), closed
    assert 2.5 < time.monotonic() - waited < 8
    metrics = httpx.get(dep.url + "/metrics").text
    assert "serverflow_agent_handshakes_deferred_total 1.0" in metrics, metrics
    assert server_state(dep, third.server_id)["status"] != "online"
    # It tries again and waits; one of the two goes away meanwhile: it is let in.
    retried = asyncio.create_task(third.handshake())
    await stalled[0].close()
    await asyncio.wait_for(retried, 10)
    await _until_online(dep, third.server_id)
    await third.close()
    await stalled[1].close()
    audit = (await api(dep, "GET", "/audit", params={"action": "agent."})).json()
    assert not [e for e in audit["entries"] if "AUT006" in json.dumps(e)], audit


async def _until_online(dep: Deployment, server_id: str) -> None:
    async def online() -> bool:
        return bool(server_state(dep, server_id)["status"] == "online")

    await until(online, "online", timeout=20)
