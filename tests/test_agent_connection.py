"""The agent's connection: handshake, bad frames, reconnects, key rotation, TLS pinning,
heartbeats and footprint, always against a real `serverflow-agent run` process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from serverflow_contract import protocol
from serverflow_contract.tlspin import spki_pin
from serverflow_testkit import missing
from serverflow_testkit.protocol_peer import (
    PeerSession,
    ProtocolPeer,
    Rig,
    eventually,
    install_agent_plugin,
    running_agent,
    self_signed_cert,
    server_tls,
)
from tests.conftest import AGENT_TEST_PLUGIN


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_agent_plugin(AGENT_TEST_PLUGIN, tmp_path_factory.getbasetemp())


@pytest.fixture
async def rig(tmp_path: Path, site: Path) -> AsyncIterator[Rig]:
    async with running_agent(tmp_path, site) as rig:
        yield rig


def pinned_key(rig: Rig) -> str:
    return str(json.loads((rig.state_dir / "agent.json").read_text())["control_plane_key"])


async def assert_closed_with_error(rig: Rig, session: PeerSession, code: str) -> None:
    """The agent answered with an error frame, closed, came back, and is still running."""
    error = await session.wait_frame("error")
    assert error.body["code"] == code, error.body
    await session.wait_closed()
    # docs/protocol.md §2: 1009 (message too big) for FRM001, 1008 (policy) otherwise.
    assert session.close_code == (1009 if code == "FRM001" else 1008), session.close_code
    await rig.peer.session(after=rig.peer.sessions.index(session) + 1)
    assert rig.agent.alive()


def _command_body(rig: Rig) -> dict[str, Any]:
    return dict(rig.peer.command("test.touch", {"path": "marker"}).body)


def _signed_raw(rig: Rig, frame_type: str, body: dict[str, Any]) -> str:
    sig = protocol.sign(rig.peer.key, frame_type, body)
    return protocol.canonical({"type": frame_type, "body": body, "sig": sig}).decode()


BAD_FRAMES: dict[str, tuple[Any, str]] = {
    # name: (builder(rig) -> data to send, expected error code)
    "not-json": (lambda rig: "{nope", "FRM002"),
    "json-array": (lambda rig: "[1, 2, 3]", "FRM002"),
    "binary": (lambda rig: b"\x00\x01binary", "FRM002"),
    "nan": (lambda rig: '{"type": "registry", "body": {"version": NaN}}', "FRM002"),
    "duplicate-keys": (
        lambda rig: '{"type": "command", "type": "registry", "body": {}, "sig": "x"}',
        "FRM002",
    ),
    "unknown-type": (lambda rig: _signed_raw(rig, "launch_missiles", {}), "FRM003"),
    "extra-top-level-key": (
        lambda rig: json.dumps({**json.loads(rig.peer.command("test.echo").encode()), "x": 1}),
        "FRM003",
    ),
    "wrong-typed-params": (
        lambda rig: _signed_raw(rig, "command", {**_command_body(rig), "params": "rm -rf /"}),
        "FRM004",
    ),
    "wrong-typed-issued-at": (
        lambda rig: _signed_raw(rig, "command", {**_command_body(rig), "issued_at": "now"}),
        "FRM004",
    ),
    "unsigned-command": (
        lambda rig: json.dumps({"type": "command", "body": _command_body(rig)}),
        "FRM004",
    ),
    "lone-surrogate-key": (
        lambda rig: '{"type": "command", "body": {"\\ud800": 1}, "sig": "x"}',
        "FRM004",
    ),
    "oversized": (
        lambda rig: json.dumps(
            {"type": "command", "body": {"pad": "x" * protocol.MAX_FRAME_BYTES}}
        ),
        "FRM001",
    ),
    "challenge-after-auth": (
        lambda rig: protocol.make_frame(
            "challenge",
            {
                "server_id": rig.peer.server_id,
                "session_id": "s-1",
                "nonce": protocol.new_nonce(),
                "issued_at": protocol.now_ms(),
            },
            rig.peer.key,
        ).encode(),
        "FRM005",
    ),
    "agent-frame-type": (
        lambda rig: protocol.make_frame(
            "heartbeat",
            {"server_id": rig.peer.server_id, "seq": 1, "sent_at": 1, "metrics": {}},
            rig.peer.key,
        ).encode(),
        "FRM005",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_bad_frame_gets_an_error_and_the_agent_reconnects(rig: Rig, name: str) -> None:
    build, code = BAD_FRAMES[name]
    session = await rig.peer.session()
    await session.send(build(rig))
    await assert_closed_with_error(rig, session, code)
    assert not (rig.marker_dir / "marker").exists()
    # The new session works.
    result = await rig.run(rig.peer.command("test.echo", {"value": name}))
    assert result["output"] == {"value": name}


async def test_huge_frame_is_cut_off_by_the_transport(rig: Rig) -> None:
    session = await rig.peer.session()
    await session.send("x" * (3 * protocol.MAX_FRAME_BYTES))
    await session.wait_closed()
    assert session.close_code == 1009  # "message too big", from websockets itself
    await rig.peer.session(after=rig.peer.sessions.index(session) + 1)
    assert rig.agent.alive()


async def test_error_from_the_control_plane_closes_and_reconnects(rig: Rig) -> None:
    session = await rig.peer.session()
    await session.send(protocol.error_frame("AUT001", "who are you?"))
    await session.wait_closed()
    await rig.peer.session(after=rig.peer.sessions.index(session) + 1)
    assert "control plane error AUT001: who are you?" in rig.agent.log()


async def test_agent_has_no_listening_socket(rig: Rig) -> None:
    process = psutil.Process(rig.agent.pid)
    connections = process.net_connections(kind="inet")
    assert not [c for c in connections if c.status == psutil.CONN_LISTEN], connections
    # The check sees the agent's sockets: the outbound one to the control plane is there.
    assert any(
        c.raddr and c.raddr.port == rig.peer.port and c.status == psutil.CONN_ESTABLISHED
        for c in connections
    ), connections


async def test_agent_reconnects_after_the_control_plane_restarts(
    tmp_path: Path, site: Path
) -> None:
    async with running_agent(tmp_path, site) as rig:
        first = await rig.peer.session()
        await rig.peer.stop()
        await first.wait_closed()
        # Down for real: the agent finds nobody listening at least once.
        await eventually(lambda: "cannot connect" in rig.agent.log(), 30, "a refused connect")
        replacement = ProtocolPeer(key=rig.peer.key, port=rig.peer.port)
        async with replacement:
            session = await replacement.session(timeout=60)
            assert session.hello is not None
            assert session.hello["public_key"] == rig.agent_public_key
            rig.peer = replacement
            result = await rig.run(replacement.command("test.touch", {"path": "back"}))
            assert result["status"] == "ok"
        assert "reconnecting in" in rig.agent.log()


async def test_offline_agent_catches_up_with_key_rotations(tmp_path: Path, site: Path) -> None:
    async with running_agent(tmp_path, site) as rig:
        original = rig.peer.key
        await rig.agent.terminate()
        rig.peer.rotate_key()
        middle = rig.peer.key
        rig.peer.rotate_key()
        sessions = len(rig.peer.sessions)
        rig.agent.start()
        await rig.peer.session(after=sessions)
        assert pinned_key(rig) == rig.peer.public_key
        for stale in (original, middle):
            refused = await rig.run(rig.peer.command("test.touch", {"path": "old"}, key=stale))
            assert refused["code"] == "SIG001"
        assert not (rig.marker_dir / "old").exists()
        assert (await rig.run(rig.peer.command("test.touch", {"path": "new"})))["status"] == "ok"


async def test_forged_key_rotation_is_refused(rig: Rig) -> None:
    session = await rig.peer.session()
    pinned = pinned_key(rig)
    attacker = protocol.new_signing_key()
    forged = protocol.make_frame(
        "key_rotation",
        {
            "old_public_key": pinned,
            "new_public_key": protocol.public_key_of(attacker),
            "issued_at": protocol.now_ms(),
        },
        attacker,
    )
    await session.send(forged)
    await assert_closed_with_error(rig, session, "KEY001")
    assert pinned_key(rig) == pinned
    refused = await rig.run(rig.peer.command("test.touch", {"path": "marker"}, key=attacker))
    assert refused["code"] == "SIG001"


class ScriptedPeer(ProtocolPeer):
    """A control plane that answers hello with scripted frames, then only listens."""

    def __init__(self, script: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.script = script

    async def _handshake(self, session: PeerSession) -> None:
        hello = protocol.parse_frame(await session.ws.recv())
        session.hello = hello.body
        for frame in self.script(self):
            await session.send(frame)
        async for message in session.ws:
            session.frames.append(protocol.parse_frame(message))


def _challenge(peer: ProtocolPeer, key: Any = None, issued_at: int | None = None) -> Any:
    return protocol.make_frame(
        "challenge",
        {
            "server_id": peer.server_id,
            "session_id": "sess-1",
            "nonce": protocol.new_nonce(),
            "issued_at": protocol.now_ms() if issued_at is None else issued_at,
        },
        key or peer.key,
    )


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (lambda peer: [_challenge(peer, key=protocol.new_signing_key())], "SIG001"),
        (lambda peer: [_challenge(peer, issued_at=protocol.now_ms() - 3_600_000)], "FRM004"),
        (lambda peer: [peer.command("test.touch", {"path": "marker"})], "FRM005"),
        (lambda peer: [peer.registry_frame()], "FRM005"),
    ],
    ids=["forged-challenge", "stale-challenge", "command-before-auth", "registry-before-auth"],
)
async def test_bad_handshake_is_refused(tmp_path: Path, site: Path, script: Any, code: str) -> None:
    peer = ScriptedPeer(script)
    async with running_agent(tmp_path, site, peer, wait=False) as rig:
        session = await eventually(lambda: peer.sessions and peer.sessions[0], what="a session")
        error = await session.wait_frame("error")
        assert error.body["code"] == code
        assert not session.of_type("auth"), "the agent authenticated to a bad control plane"
        await session.wait_closed()
        await eventually(lambda: len(peer.sessions) > 1, 30, "a reconnect")
        assert rig.agent.alive()
        assert not (rig.marker_dir / "marker").exists()


@pytest.mark.slow
async def test_handshake_must_finish_in_time(tmp_path: Path, site: Path) -> None:
    peer = ScriptedPeer(lambda peer: [])
    async with running_agent(tmp_path, site, peer, wait=False) as rig:
        session = await eventually(lambda: peer.sessions and peer.sessions[0], what="a session")
        error = await session.wait_frame("error", timeout=30)
        assert error.body["code"] == "AUT004"
        assert rig.agent.alive()


async def test_agent_key_rotation(rig: Rig) -> None:
    old = rig.agent_public_key
    out = subprocess.run(
        [sys.executable, "-m", "serverflow_agent", "rotate-key", "--state-dir", str(rig.state_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=rig.agent.env,
    )
    assert "pending" in out.stdout
    assert (rig.state_dir / "identity.next.key").stat().st_mode & 0o777 == 0o600
    session = await rig.peer.session()
    offer = await session.wait_frame("agent_key")
    body = offer.body
    protocol.verify(old, "agent_key", body, offer.sig)  # signed by the old key
    new = body["new_public_key"]
    assert body["old_public_key"] == old and new != old
    proof_body = {
        "server_id": rig.peer.server_id,
        "new_public_key": new,
        "issued_at": body["issued_at"],
    }
    protocol.verify(new, "agent_key_proof", proof_body, body["proof"])  # and by the new one
    # Until accepted, the old key stays in use.
    beat = await session.wait_frame("heartbeat", lambda f: f.body["seq"] > 3)
    protocol.verify(old, "heartbeat", beat.body, beat.sig)
    rig.peer.agent_keys = {new}
    await session.send(
        protocol.make_frame(
            "agent_key_accepted",
            {"server_id": rig.peer.server_id, "public_key": new, "issued_at": protocol.now_ms()},
            rig.peer.key,
        )
    )

    def signed_by_new() -> bool:
        beats = session.of_type("heartbeat")
        try:
            protocol.verify(new, "heartbeat", beats[-1].body, beats[-1].sig)
        except protocol.ProtocolError:
            return False
        return True

    await eventually(signed_by_new, what="heartbeats signed by the new key")
    assert not (rig.state_dir / "identity.next.key").exists()
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverflow_agent",
            "status",
            "--json",
            "--state-dir",
            str(rig.state_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=rig.agent.env,
    )
    assert json.loads(status.stdout)["agent_public_key"] == new
    # The next connection presents the new key (the peer now only accepts that one).
    await session.ws.close()
    again = await rig.peer.session(after=rig.peer.sessions.index(session) + 1)
    assert again.agent_key == new


async def test_heartbeats_are_signed_and_carry_metrics(rig: Rig) -> None:
    session = await rig.peer.session()
    await session.wait_frame("heartbeat", lambda f: f.body["seq"] >= 3)
    beats = session.of_type("heartbeat")
    for beat in beats:
        protocol.verify(rig.agent_public_key, "heartbeat", beat.body, beat.sig)
    metrics = beats[-1].body["metrics"]
    assert set(metrics) >= {
        "cpu_percent",
        "load1",
        "load5",
        "load15",
        "memory",
        "disk",
        "net",
        "uptime_s",
        "agent_rss",
    }
    assert metrics["memory"]["total"] == psutil.virtual_memory().total
    assert metrics["agent_rss"] == pytest.approx(
        psutil.Process(rig.agent.pid).memory_info().rss, rel=0.5
    )
    assert [b.body["seq"] for b in beats] == list(range(1, len(beats) + 1))


async def test_idle_agent_stays_small(rig: Rig) -> None:
    process = psutil.Process(rig.agent.pid)
    session = await rig.peer.session()
    await session.wait_frame("heartbeat", lambda f: f.body["seq"] >= 5)
    before = process.cpu_times()
    started = time.monotonic()
    beats = len(session.of_type("heartbeat"))
    await eventually(lambda: len(session.of_type("heartbeat")) >= beats + 10, what="heartbeats")
    after = process.cpu_times()
    elapsed = time.monotonic() - started
    cpu = (after.user + after.system - before.user - before.system) / elapsed * 100
    rss = process.memory_info().rss
    print(f"idle agent: rss {rss / 2**20:.1f} MiB, cpu {cpu:.2f}% (heartbeat every 300 ms)")
    assert rss < 40 * 2**20


async def test_sigterm_stops_the_agent_cleanly(rig: Rig) -> None:
    assert await rig.agent.terminate() == 0
    assert "stopping" in rig.agent.log()
    assert "Traceback" not in rig.agent.log()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("openssl", "the openssl binary is not installed")
    return self_signed_cert(tmp_path)


async def test_wss_with_the_right_pin(tmp_path: Path, site: Path, tls_files: Any) -> None:
    cert, key = tls_files
    pin = spki_pin(_der(cert))
    peer = ProtocolPeer(ssl_context=server_tls(cert, key))
    config = {"ca_file": str(cert), "tls_pin": pin}
    async with running_agent(tmp_path, site, peer, config) as rig:
        assert peer.url.startswith("wss://")
        result = await rig.run(peer.command("test.touch", {"path": "over-tls"}))
        assert result["status"] == "ok"


async def test_wss_with_a_wrong_pin_never_talks(tmp_path: Path, site: Path, tls_files: Any) -> None:
    cert, key = tls_files
    other_cert, _ = self_signed_cert(tmp_path, "other")
    peer = ProtocolPeer(ssl_context=server_tls(cert, key))
    config = {"ca_file": str(cert), "tls_pin": spki_pin(_der(other_cert))}
    async with running_agent(tmp_path, site, peer, config, wait=False) as rig:
        await eventually(
            lambda: rig.agent.log().count("TLS pin check failed") >= 2, 30, "two refusals"
        )
        assert "does not match the pinned one" in rig.agent.log()
        assert peer.sessions == []  # not even the WebSocket upgrade was sent
        assert rig.agent.alive()


async def test_wss_with_an_untrusted_certificate(
    tmp_path: Path, site: Path, tls_files: Any
) -> None:
    cert, key = tls_files
    peer = ProtocolPeer(ssl_context=server_tls(cert, key))
    # No ca_file: the system CAs do not know this self-signed certificate.
    async with running_agent(tmp_path, site, peer, wait=False) as rig:
        await eventually(
            lambda: "CERTIFICATE_VERIFY_FAILED" in rig.agent.log(), 30, "a TLS refusal"
        )
        assert peer.sessions == []
        assert rig.agent.alive()


def _der(cert: Path) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(cert.read_text())
