"""The agent's state directory, its CLI (status, rotate-key) and `register` against a small
HTTP(S) server that speaks the registration endpoint's wire format.

The end-to-end registration against the real control plane lives with the control plane's
tests; here we check what the agent itself does with each kind of answer.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from serverflow_agent.config import AgentConfig, ConfigError
from serverflow_agent.identity import load_identity
from serverflow_agent.state import AgentState
from serverflow_contract import protocol
from serverflow_contract.tlspin import spki_pin
from serverflow_testkit import free_port, missing
from serverflow_testkit.protocol_peer import ProtocolPeer, make_state_dir, self_signed_cert


def agent_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serverflow_agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")},
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- state directory and local state ----------------------------------------------------


def test_state_dir_layout_and_modes(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    key = make_state_dir(state_dir, ProtocolPeer())
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "identity.key") == 0o600
    assert mode(state_dir / "agent.json") == 0o600
    assert mode(state_dir / "state.sqlite3") == 0o600
    assert load_identity(state_dir).verify_key == key.verify_key
    # O_EXCL: a second identity is never written over the first.
    from serverflow_agent.identity import create_identity

    with pytest.raises(FileExistsError):
        create_identity(state_dir)


def test_replay_cache_survives_reopening_and_prunes_expired(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "state.sqlite3")
    now = protocol.now_ms()
    assert state.remember_nonce("n" * 16, now + 60_000, "c1")
    assert not state.remember_nonce("n" * 16, now + 60_000, "c1")
    # Expired long enough ago that freshness rules refuse it anyway.
    assert state.remember_nonce("o" * 16, now - protocol.CLOCK_SKEW_MS - 1_000, "c2")
    # Expired, but still inside the clock-skew window: must be kept.
    assert state.remember_nonce("s" * 16, now - protocol.CLOCK_SKEW_MS + 5_000, "c3")
    state.close()
    state = AgentState(tmp_path / "state.sqlite3")
    assert state.prune_nonces(now) == 1
    assert state.seen_nonce("n" * 16) and state.seen_nonce("s" * 16)
    assert not state.seen_nonce("o" * 16)
    state.close()


def test_registry_and_kv_persist(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "state.sqlite3")
    assert state.registry() is None
    body = {"server_id": "s", "version": 3, "issued_at": 1, "actions": ["a.b"]}
    state.store_registry(body, "sig")
    state.set("desired", {"apps": [1, 2]})
    state.close()
    state = AgentState(tmp_path / "state.sqlite3")
    registry = state.registry()
    assert registry is not None
    assert registry.version == 3 and registry.actions == {"a.b"} and registry.sig == "sig"
    assert state.get("desired") == {"apps": [1, 2]}
    assert state.get("nothing") is None
    state.close()


def test_config_refuses_nonsense(tmp_path: Path) -> None:
    good = {
        "url": "https://cp.example:8443",
        "ws_url": "wss://cp.example:8443/agent/ws",
        "server_id": "srv-1",
        "org_id": "org-1",
        "control_plane_key": protocol.public_key_of(protocol.new_signing_key()),
    }
    assert AgentConfig.from_dict(good).to_dict() == good
    for bad in [
        {"url": "ftp://x"},
        {"ws_url": "http://x/agent/ws"},
        {"server_id": "a b"},
        {"control_plane_key": "short"},
        {"tls_pin": "md5/abc"},
        {"heartbeat_interval_ms": 5},
        {"surprise": 1},
    ]:
        with pytest.raises(ConfigError):
            AgentConfig.from_dict({**good, **bad})
    with pytest.raises(ConfigError, match="wss"):
        AgentConfig.from_dict(
            {**good, "ws_url": "ws://x/agent/ws", "tls_pin": "sha256/" + "A" * 43 + "="}
        )


# -- status and rotate-key ------------------------------------------------------------


def test_status_shows_the_registration_but_no_secret(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    peer = ProtocolPeer(server_id="srv-42")
    key = make_state_dir(state_dir, peer)
    state = AgentState.open(state_dir)
    state.store_registry(
        {"server_id": "srv-42", "version": 7, "issued_at": 1, "actions": ["system.info"]}, "s"
    )
    state.close()
    out = agent_cli("status", "--json", "--state-dir", str(state_dir))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["server_id"] == "srv-42"
    assert data["control_plane_key_id"] == protocol.key_id(peer.public_key)
    assert data["agent_public_key"] == protocol.public_key_of(key)
    assert data["registry_version"] == 7
    seed = (state_dir / "identity.key").read_text().strip()
    text = agent_cli("status", "--state-dir", str(state_dir))
    assert "srv-42" in text.stdout and "7" in text.stdout
    for output in (out.stdout, text.stdout):
        assert seed not in output


def test_status_of_an_unregistered_agent(tmp_path: Path) -> None:
    out = agent_cli("status", "--state-dir", str(tmp_path / "nothing"))
    assert out.returncode == 1
    assert out.stderr.startswith("error [STATE]:") and "register first" in out.stderr
    assert "Traceback" not in out.stderr


def test_rotate_key_writes_one_pending_key(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    key = make_state_dir(state_dir, ProtocolPeer())
    first = agent_cli("rotate-key", "--state-dir", str(state_dir))
    assert first.returncode == 0, first.stderr
    pending = state_dir / "identity.next.key"
    assert mode(pending) == 0o600
    content = pending.read_text()
    again = agent_cli("rotate-key", "--state-dir", str(state_dir))
    assert again.returncode == 1 and "error [PENDING]" in again.stderr
    assert pending.read_text() == content
    forced = agent_cli("rotate-key", "--force", "--state-dir", str(state_dir))
    assert forced.returncode == 0 and pending.read_text() != content
    # The identity itself only changes once the control plane accepts the new key.
    assert load_identity(state_dir).verify_key == key.verify_key


def test_state_dir_from_the_environment(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    make_state_dir(state_dir, ProtocolPeer(server_id="from-env"))
    env = {**os.environ, "SERVERFLOW_AGENT_STATE_DIR": str(state_dir)}
    out = agent_cli("status", "--json", env=env)
    assert json.loads(out.stdout)["server_id"] == "from-env"


# -- registration ---------------------------------------------------------------------


@dataclass
class FakeRegistrar:
    """A tiny HTTP server answering POST /api/v1/agents/register like the control plane."""

    status: int = 201
    answer: dict[str, Any] | str = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    url: str = ""
    cp_key: str = field(default_factory=lambda: protocol.public_key_of(protocol.new_signing_key()))

    def __enter__(self) -> FakeRegistrar:
        registrar = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                registrar.requests.append((self.path, json.loads(self.rfile.read(length))))
                body = registrar.answer
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(registrar.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        if self.tls:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        if not self.answer:
            ws = "wss" if self.tls else "ws"
            self.answer = {
                "server_id": "srv-7",
                "org_id": "org-3",
                "control_plane_key": self.cp_key,
                "ws_url": f"{ws}://127.0.0.1:{self.server.server_address[1]}/agent/ws",
                "heartbeat_interval_ms": 5000,
            }
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_register_writes_the_state(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with FakeRegistrar() as cp:
        out = agent_cli(
            "register", "--url", cp.url + "/", "--token", "tok-123", "--state-dir", str(state_dir)
        )
        assert out.returncode == 0, out.stderr
        assert "registered as server srv-7" in out.stdout
        assert "tok-123" not in out.stdout + out.stderr
        ((path, sent),) = cp.requests
    assert path == "/api/v1/agents/register"
    assert set(sent) == {"token", "public_key", "hostname", "agent_version"}
    assert sent["token"] == "tok-123"
    assert sent["public_key"] == protocol.public_key_of(load_identity(state_dir))
    config = AgentConfig.load(state_dir)
    assert config.server_id == "srv-7" and config.org_id == "org-3"
    assert config.control_plane_key == cp.cp_key
    assert config.url == cp.url and config.ws_url.endswith("/agent/ws")
    assert mode(state_dir / "identity.key") == 0o600 and mode(state_dir) == 0o700

    again = agent_cli("register", "--url", cp.url, "--token", "t", "--state-dir", str(state_dir))
    assert again.returncode == 1 and "error [ALREADY_REGISTERED]" in again.stderr


def test_register_again_with_force_replaces_the_key(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with FakeRegistrar() as cp:
        assert (
            agent_cli(
                "register", "--url", cp.url, "--token", "a", "--state-dir", str(state_dir)
            ).returncode
            == 0
        )
        first = protocol.public_key_of(load_identity(state_dir))
        out = agent_cli(
            "register", "--url", cp.url, "--token", "b", "--force", "--state-dir", str(state_dir)
        )
        assert out.returncode == 0, out.stderr
        second = protocol.public_key_of(load_identity(state_dir))
        assert second != first and cp.requests[-1][1]["public_key"] == second


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (
            400,
            {"error": {"code": "INS001", "message": "install token invalid, expired or used"}},
            "error [INS001]: install token invalid, expired or used",
        ),
        (500, "<html>oops</html>", "error [HTTP500]: the control plane answered HTTP 500"),
        (201, "not json", "error [BAD_RESPONSE]"),
        (201, {"server_id": "s"}, "error [BAD_RESPONSE]: the answer has no org_id"),
        (
            201,
            {"server_id": "s", "org_id": "o", "control_plane_key": "short", "ws_url": "ws://x"},
            "error [BAD_RESPONSE]",
        ),
    ],
    ids=["bad-token", "server-error", "not-json", "incomplete", "bad-key"],
)
def test_register_errors_are_clean(tmp_path: Path, status: int, answer: Any, expected: str) -> None:
    state_dir = tmp_path / "state"
    with FakeRegistrar(status=status, answer=answer) as cp:
        out = agent_cli(
            "register", "--url", cp.url, "--token", "secret-token", "--state-dir", str(state_dir)
        )
    assert out.returncode == 1
    assert expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "secret-token" not in out.stderr
    assert not (state_dir / "agent.json").exists()


def test_register_against_nothing(tmp_path: Path) -> None:
    out = agent_cli(
        "register",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--token",
        "t",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert out.returncode == 1 and out.stderr.startswith("error [CONNECTION]: cannot reach")
    assert "Traceback" not in out.stderr


def test_register_a_retry_reuses_the_key_made_by_a_failed_attempt(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    refusal = {"error": {"code": "INS001", "message": "used"}}
    with FakeRegistrar(status=400, answer=refusal) as cp:
        assert (
            agent_cli(
                "register", "--url", cp.url, "--token", "x", "--state-dir", str(state_dir)
            ).returncode
            == 1
        )
        key = protocol.public_key_of(load_identity(state_dir))
    with FakeRegistrar() as cp:
        assert (
            agent_cli(
                "register", "--url", cp.url, "--token", "y", "--state-dir", str(state_dir)
            ).returncode
            == 0
        )
        assert cp.requests[0][1]["public_key"] == key


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    if shutil.which("openssl") is None:
        missing("openssl", "the openssl binary is not installed")
    cert, key = self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def _pin(cert: Path) -> str:
    return spki_pin(ssl.PEM_cert_to_DER_cert(cert.read_text()))


def test_register_over_tls_with_the_pin(tmp_path: Path, tls: Any) -> None:
    cert, context = tls
    state_dir = tmp_path / "state"
    with FakeRegistrar(tls=context) as cp:
        out = agent_cli(
            "register",
            "--url",
            cp.url,
            "--token",
            "t",
            "--pin",
            _pin(cert),
            "--ca-file",
            str(cert),
            "--state-dir",
            str(state_dir),
        )
        assert out.returncode == 0, out.stderr
    config = AgentConfig.load(state_dir)
    assert config.tls_pin == _pin(cert)
    assert config.ca_file == str(cert.resolve())
    assert config.ws_url.startswith("wss://")


def test_register_with_a_wrong_pin_sends_no_token(tmp_path: Path, tls: Any) -> None:
    cert, context = tls
    other, _ = self_signed_cert(tmp_path, "other")
    with FakeRegistrar(tls=context) as cp:
        out = agent_cli(
            "register",
            "--url",
            cp.url,
            "--token",
            "secret",
            "--pin",
            _pin(other),
            "--ca-file",
            str(cert),
            "--state-dir",
            str(tmp_path / "s"),
        )
        assert cp.requests == []
    assert out.returncode == 1 and out.stderr.startswith("error [TLS_PIN]:"), out.stderr
    assert "Traceback" not in out.stderr


def test_register_refuses_an_untrusted_certificate(tmp_path: Path, tls: Any) -> None:
    _, context = tls
    with FakeRegistrar(tls=context) as cp:
        out = agent_cli(
            "register", "--url", cp.url, "--token", "secret", "--state-dir", str(tmp_path / "s")
        )
        assert cp.requests == []
    assert out.returncode == 1 and out.stderr.startswith("error [TLS]:"), out.stderr


def test_register_refuses_to_downgrade_to_plain_websocket(tmp_path: Path, tls: Any) -> None:
    cert, context = tls
    with FakeRegistrar(tls=context) as cp:
        assert isinstance(cp.answer, dict)
        cp.answer["ws_url"] = "ws://127.0.0.1:1/agent/ws"
        out = agent_cli(
            "register",
            "--url",
            cp.url,
            "--token",
            "t",
            "--ca-file",
            str(cert),
            "--state-dir",
            str(tmp_path / "s"),
        )
    assert out.returncode == 1 and "unencrypted ws_url" in out.stderr


def test_state_files_are_never_group_readable(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: our own modes must still win
    try:
        make_state_dir(tmp_path / "state", ProtocolPeer())
    finally:
        os.umask(old)
    for path in [tmp_path / "state", *sorted((tmp_path / "state").iterdir())]:
        assert mode(path) & 0o077 == 0, path


def test_backoff_is_exponential_with_full_jitter() -> None:
    import random

    from serverflow_agent.client import BACKOFF_CAP_S, backoff_delay

    rng = random.Random(7)
    for attempt, ceiling in [(0, 1), (1, 2), (3, 8), (5, 32), (6, 60), (40, 60)]:
        samples = [backoff_delay(attempt, rng) for _ in range(2000)]
        assert all(0 <= s <= ceiling for s in samples), attempt
        # Full jitter: spread over the whole range, not bunched at the ceiling.
        assert min(samples) < ceiling * 0.05 and max(samples) > ceiling * 0.95, attempt
    assert BACKOFF_CAP_S == 60


def test_agent_imports_nothing_from_the_control_plane() -> None:
    code = (
        "import sys\n"
        "import serverflow_agent.cli, serverflow_agent.client, serverflow_agent.registration\n"
        "import serverflow_agent.builtin, serverflow_agent.system\n"
        "from serverflow_agent.plugins import AgentPlugins\n"
        "AgentPlugins()\n"
        "heavy = {'serverflow', 'pydantic', 'quart', 'tortoise', 'cryptography', 'requests',\n"
        "         'httpx', 'click'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
