"""Signed commands against a real `serverflow-agent run` process.

Every negative test proves nothing ran: the refused command would have created a marker
file, and after the refusal a valid command is run to completion, so a command that had
slipped through would have finished too.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from serverflow_contract import protocol
from serverflow_testkit.protocol_peer import (
    AgentProcess,
    ProtocolPeer,
    Rig,
    agent_env,
    eventually,
    install_agent_plugin,
    running_agent,
)
from tests.conftest import AGENT_TEST_PLUGIN


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_agent_plugin(AGENT_TEST_PLUGIN, tmp_path_factory.getbasetemp())


@pytest.fixture
async def rig(tmp_path: Path, site: Path) -> AsyncIterator[Rig]:
    async with running_agent(tmp_path, site) as rig:
        yield rig


async def assert_refused(rig: Rig, frame: protocol.Frame, code: str, marker: str) -> dict[str, Any]:
    result = await rig.run(frame)
    assert result["status"] == "refused", result
    assert result["code"] == code, result
    assert result["command_id"] == frame.body["id"]
    assert result["server_id"] == rig.peer.server_id
    # Run something valid afterwards: had the refused command run, it would be done too.
    check = await rig.run(rig.peer.command("test.touch", {"path": f"after-{marker}"}))
    assert check["status"] == "ok", check
    assert not (rig.marker_dir / marker).exists(), f"{marker} was created: the command ran"
    assert f"refused command {frame.body['id']}" in rig.agent.log()
    return result


async def test_signed_command_runs_and_result_is_signed(rig: Rig) -> None:
    frame = rig.peer.command("test.touch", {"path": "marker"})
    session = await rig.peer.session()
    await session.send(frame)
    result = await rig.peer.result(frame.body["id"])
    # Signed by the agent's key (and by nothing else).
    protocol.verify(rig.agent_public_key, "result", result.body, result.sig)
    with pytest.raises(protocol.ProtocolError):
        protocol.verify(rig.peer.public_key, "result", result.body, result.sig)
    body = result.body
    assert body["status"] == "ok"
    assert body["server_id"] == rig.peer.server_id
    assert body["started_at"] <= body["finished_at"]
    assert (rig.marker_dir / "marker").exists()
    assert body["output"]["created"] == str((rig.marker_dir / "marker").resolve())
    # The action saw the agent's state directory in its environment.
    assert body["output"]["state_dir"] == str(rig.state_dir)


async def test_bad_signature_is_refused(rig: Rig) -> None:
    other = protocol.new_signing_key()
    frame = rig.peer.command("test.touch", {"path": "marker"}, key=other)
    await assert_refused(rig, frame, "SIG001", "marker")


async def test_tampered_params_are_refused(rig: Rig) -> None:
    signed = rig.peer.command("test.touch", {"path": "harmless"})
    tampered = protocol.Frame("command", {**signed.body, "params": {"path": "marker"}}, signed.sig)
    await assert_refused(rig, tampered, "SIG001", "marker")
    assert not (rig.marker_dir / "harmless").exists()


async def test_command_for_another_server_is_refused(rig: Rig) -> None:
    frame = rig.peer.command("test.touch", {"path": "marker"}, server_id="srv-other")
    await assert_refused(rig, frame, "CMD002", "marker")


async def test_expired_command_is_refused(rig: Rig) -> None:
    issued = protocol.now_ms() - 120_000
    frame = rig.peer.command("test.touch", {"path": "marker"}, issued_at=issued, ttl_ms=60_000)
    await assert_refused(rig, frame, "CMD003", "marker")


async def test_command_from_the_future_is_refused(rig: Rig) -> None:
    issued = protocol.now_ms() + 120_000
    frame = rig.peer.command("test.touch", {"path": "marker"}, issued_at=issued)
    await assert_refused(rig, frame, "CMD004", "marker")


async def test_command_living_too_long_is_refused(rig: Rig) -> None:
    frame = rig.peer.command(
        "test.touch", {"path": "marker"}, ttl_ms=protocol.MAX_COMMAND_LIFETIME_MS + 1
    )
    await assert_refused(rig, frame, "CMD009", "marker")


async def test_replayed_command_is_refused(rig: Rig) -> None:
    frame = rig.peer.command("test.touch", {"path": "marker"})
    first = await rig.run(frame)
    assert first["status"] == "ok"
    (rig.marker_dir / "marker").unlink()
    session = await rig.peer.session()
    before = len(session.of_type("result"))
    await session.send(frame)
    await eventually(lambda: len(session.of_type("result")) > before, what="the replay's result")
    replay = session.of_type("result")[-1].body
    assert replay["status"] == "refused" and replay["code"] == "CMD005", replay
    check = await rig.run(rig.peer.command("test.touch", {"path": "after"}))
    assert check["status"] == "ok"
    assert not (rig.marker_dir / "marker").exists()


async def test_replay_after_agent_restart_is_refused(rig: Rig) -> None:
    frame = rig.peer.command("test.touch", {"path": "marker"})
    assert (await rig.run(frame))["status"] == "ok"
    (rig.marker_dir / "marker").unlink()
    rig.agent.kill()  # SIGKILL: nothing gets a chance to be flushed at exit
    sessions = len(rig.peer.sessions)
    rig.agent.start()
    session = await rig.peer.session(after=sessions)
    before = len(session.of_type("result"))
    await session.send(frame)
    await eventually(lambda: len(session.of_type("result")) > before, what="the replay's result")
    replay = session.of_type("result")[-1].body
    assert replay["status"] == "refused" and replay["code"] == "CMD005", replay
    check = await rig.run(rig.peer.command("test.touch", {"path": "after"}))
    assert check["status"] == "ok"
    assert not (rig.marker_dir / "marker").exists()


async def test_unknown_action_is_refused(rig: Rig) -> None:
    frame = rig.peer.command("test.nothere", {"path": "marker"})
    await assert_refused(rig, frame, "CMD006", "marker")


async def test_action_outside_the_signed_registry_is_refused(rig: Rig) -> None:
    session = await rig.peer.session()
    await session.send(rig.peer.registry_frame(actions=["test.echo"], version=2))
    frame = rig.peer.command("test.touch", {"path": "marker"})
    await session.send(frame)
    result = await rig.peer.result(frame.body["id"])
    assert result.body["status"] == "refused" and result.body["code"] == "CMD007"
    allowed = await rig.run(rig.peer.command("test.echo", {"value": 1}))
    assert allowed["status"] == "ok"
    assert not (rig.marker_dir / "marker").exists()


@pytest.mark.parametrize(
    "params",
    [{"path": 5}, {"path": "marker", "extra": True}, {}, {"path": ""}],
    ids=["wrong-type", "extra-key", "missing", "too-short"],
)
async def test_schema_violating_params_are_refused(rig: Rig, params: dict[str, Any]) -> None:
    frame = rig.peer.command("test.touch", params)
    result = await assert_refused(rig, frame, "CMD008", "marker")
    assert "params" in result["message"]


async def test_command_signed_by_a_rotated_out_key_is_refused(rig: Rig) -> None:
    old_key = rig.peer.key
    session = await rig.peer.session()
    await session.send(rig.peer.rotate_key())
    await eventually(
        lambda: (
            json.loads((rig.state_dir / "agent.json").read_text())["control_plane_key"]
            == rig.peer.public_key
        ),
        what="the new control plane key to be pinned",
    )
    frame = rig.peer.command("test.touch", {"path": "marker"}, key=old_key)
    await assert_refused(rig, frame, "SIG001", "marker")
    assert (await rig.run(rig.peer.command("test.touch", {"path": "new"})))["status"] == "ok"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_timeout_kills_the_action_and_its_children(rig: Rig) -> None:
    result = await rig.run(rig.peer.command("test.sleep", {"seconds": 60}))
    assert result["status"] == "error" and result["code"] == "CMD010", result
    (pids_file,) = rig.marker_dir.glob("sleep-*.json")
    pids = json.loads(pids_file.read_text())
    await eventually(lambda: gone(pids["pid"]) and gone(pids["child"]), what="the action to die")


async def test_memory_limit(rig: Rig) -> None:
    small = await rig.run(rig.peer.command("test.allocate", {"megabytes": 8}))
    assert small["status"] == "ok" and small["output"] == {"allocated": 8}
    big = await rig.run(rig.peer.command("test.allocate", {"megabytes": 512}))
    assert big["status"] == "error" and big["code"] == "CMD012", big
    assert "96 MiB" in big["message"]


async def test_failing_action_reports_its_error(rig: Rig) -> None:
    result = await rig.run(rig.peer.command("test.fail", {"message": "disk on fire"}))
    assert result["status"] == "error" and result["code"] == "CMD011"
    assert "RuntimeError: disk on fire" in result["message"]


async def test_action_stdout_cannot_forge_the_answer(rig: Rig) -> None:
    value = {"nested": [1, 2.5, "three", None, True]}
    result = await rig.run(rig.peer.command("test.echo", {"value": value}))
    assert result["status"] == "ok"
    assert result["output"] == {"value": value}


async def test_slow_action_blocks_neither_commands_nor_heartbeats(rig: Rig) -> None:
    session = await rig.peer.session()
    slow = rig.peer.command("test.sleep", {"seconds": 1.0})
    await session.send(slow)
    await eventually(lambda: list(rig.marker_dir.glob("sleep-*.json")), what="the sleep to start")
    beats = len(session.of_type("heartbeat"))
    fast = await rig.run(rig.peer.command("test.touch", {"path": "fast"}))
    assert fast["status"] == "ok"
    assert not [f for f in session.of_type("result") if f.body["command_id"] == slow.body["id"]]
    await eventually(lambda: len(session.of_type("heartbeat")) >= beats + 2, what="heartbeats")
    done = await rig.peer.result(slow.body["id"])
    assert done.body["status"] == "ok", done.body
    seqs = [f.body["seq"] for f in session.of_type("heartbeat")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_builtin_read_actions(rig: Rig) -> None:
    info = await rig.run(rig.peer.command("system.info"))
    assert info["status"] == "ok" and info["output"]["hostname"] == os.uname().nodename
    metrics = await rig.run(rig.peer.command("system.metrics"))
    assert metrics["status"] == "ok"
    assert metrics["output"]["memory"]["total"] == psutil.virtual_memory().total
    disk = await rig.run(rig.peer.command("system.disk_usage", {"path": str(rig.marker_dir)}))
    assert disk["status"] == "ok"
    assert disk["output"]["filesystems"][0]["total"] == psutil.disk_usage(str(rig.marker_dir)).total
    every = await rig.run(rig.peer.command("system.disk_usage"))
    assert every["status"] == "ok" and every["output"]["filesystems"]
    top = await rig.run(rig.peer.command("system.top_processes", {"limit": 3, "sort_by": "memory"}))
    assert top["status"] == "ok"
    rows = top["output"]["processes"]
    assert 1 <= len(rows) <= 3
    assert [r["rss"] for r in rows] == sorted((r["rss"] for r in rows), reverse=True)
    assert all("cmdline" not in r for r in rows)


async def test_service_status(rig: Rig) -> None:
    result = await rig.run(rig.peer.command("system.service_status", {"name": "ssh.service"}))
    if result["status"] == "ok":
        assert result["output"]["properties"]["Id"] == "ssh.service"
    else:
        # No systemd here (a container): a clear error, not a crash.
        assert result["code"] == "CMD011"
        assert "systemctl" in result["message"]
    # A name that systemctl could read as an option is refused before anything runs.
    for name in ["-H", "--host=x", "a b", "x" * 101]:
        refused = await rig.run(rig.peer.command("system.service_status", {"name": name}))
        assert refused["code"] == "CMD008", (name, refused)


async def test_result_is_delivered_after_a_reconnect(tmp_path: Path, site: Path) -> None:
    """A result finished while the connection was down is sent on the next session."""
    async with running_agent(tmp_path, site) as rig:
        session = await rig.peer.session()
        frame = rig.peer.command("test.sleep", {"seconds": 0.8})
        await session.send(frame)
        await eventually(lambda: list(rig.marker_dir.glob("sleep-*.json")), what="the sleep")
        await session.ws.close()
        result = await rig.peer.result(frame.body["id"], timeout=30)
        assert result.body["status"] == "ok"
        assert result not in session.frames


async def test_agent_without_registration_exits_cleanly(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "empty", agent_env(None, tmp_path), tmp_path / "a.log")
    agent.start()
    assert agent.process is not None
    assert agent.process.wait(timeout=30) == 1
    log = agent.log()
    assert "error [STATE]" in log and "register first" in log
    assert "Traceback" not in log


async def test_unverifiable_registry_is_refused(rig: Rig) -> None:
    session = await rig.peer.session()
    forged = protocol.make_frame(
        "registry",
        {
            "server_id": rig.peer.server_id,
            "version": 9,
            "issued_at": protocol.now_ms(),
            "actions": ["test.touch"],
        },
        protocol.new_signing_key(),
    )
    await session.send(forged)
    error = await session.wait_frame("error")
    assert error.body["code"] == "SIG001"
    await session.wait_closed()
    await rig.peer.session(after=len(rig.peer.sessions))
    assert rig.agent.alive()


async def test_older_registry_is_refused(tmp_path: Path, site: Path) -> None:
    peer = ProtocolPeer(registry_version=5)
    async with running_agent(tmp_path, site, peer) as rig:
        session = await rig.peer.session()
        await session.send(rig.peer.registry_frame(version=4))
        error = await session.wait_frame("error")
        assert error.body["code"] == "REG001"
        await session.wait_closed()
        # The agent comes back, still at version 5 (the peer sends 5 again).
        await rig.peer.session(after=len(rig.peer.sessions))
        assert rig.agent.alive()


def fork_servers(agent_pid: int) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(agent_pid).children()
        if "serverflow_agent.forkserver" in " ".join(p.cmdline())
    ]


async def test_a_lost_fork_server_stops_its_action_and_is_started_again(rig: Rig) -> None:
    """Actions are forked by one long-lived process: if it dies, the action it was
    watching is stopped and reported (never left running unwatched), and the next
    command gets a new fork server."""
    first = await rig.run(rig.peer.command("test.touch", {"path": "before"}))
    assert first["status"] == "ok", first
    (server,) = fork_servers(rig.agent.pid)
    session = await rig.peer.session()
    slow = rig.peer.command("test.sleep", {"seconds": 30})
    await session.send(slow)
    await eventually(lambda: list(rig.marker_dir.glob("sleep-*.json")), what="the sleep to start")
    (pids_file,) = rig.marker_dir.glob("sleep-*.json")
    pids = json.loads(pids_file.read_text())
    server.kill()
    lost = (await rig.peer.result(slow.body["id"])).body
    assert lost["status"] == "error" and lost["code"] == "CMD011", lost
    assert "killed by signal 9" in lost["message"], lost
    await eventually(lambda: gone(pids["pid"]) and gone(pids["child"]), what="the action to die")
    assert "action fork server lost" in rig.agent.log()
    after = await rig.run(rig.peer.command("test.touch", {"path": "after"}))
    assert after["status"] == "ok", after
    (again,) = fork_servers(rig.agent.pid)
    assert again.pid != server.pid
