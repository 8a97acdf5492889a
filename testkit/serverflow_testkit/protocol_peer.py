"""The control-plane side of the agent protocol, for driving a real `serverflow-agent run`.

`ProtocolPeer` is a WebSocket server on 127.0.0.1 that holds a control-plane signing key
the test controls. It performs the handshake exactly as docs/protocol.md describes
(hello -> key_rotation* -> challenge -> auth -> authorized -> registry) and then lets the
test send any frame, also deliberately broken ones, and wait for what the agent answers.
It is a protocol peer, not a mock: the agent under test is the real process, started by
`AgentProcess` with a state directory prepared through the agent's own Python API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from serverflow_agent.config import AgentConfig, ensure_state_dir
from serverflow_agent.identity import create_identity
from serverflow_agent.state import AgentState
from serverflow_contract import protocol
from serverflow_testkit import free_port, stop_process

DEFAULT_ACTIONS = (
    "test.touch",
    "test.sleep",
    "test.allocate",
    "test.fail",
    "test.echo",
    "system.info",
    "system.metrics",
    "system.disk_usage",
    "system.top_processes",
    "system.service_status",
)


async def eventually(condition: Callable[[], Any], timeout: float = 15, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.02)


@dataclass
class PeerSession:
    """One agent connection, from the control plane's point of view."""

    ws: ServerConnection
    hello: dict[str, Any] | None = None
    session_id: str | None = None
    authorized: bool = False
    frames: list[protocol.Frame] = field(default_factory=list)
    bad_frames: list[str] = field(default_factory=list)  # agent frames that did not parse
    closed: bool = False
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def agent_key(self) -> str:
        assert self.hello is not None
        return str(self.hello["public_key"])

    async def send(self, frame: protocol.Frame | str | bytes) -> None:
        data = frame.encode() if isinstance(frame, protocol.Frame) else frame
        await self.ws.send(data)

    def of_type(self, frame_type: str) -> list[protocol.Frame]:
        return [f for f in self.frames if f.type == frame_type]

    async def wait_frame(
        self,
        frame_type: str,
        predicate: Callable[[protocol.Frame], bool] = lambda f: True,
        timeout: float = 15,
    ) -> protocol.Frame:
        def found() -> protocol.Frame | None:
            return next((f for f in self.of_type(frame_type) if predicate(f)), None)

        frame: protocol.Frame = await eventually(found, timeout, f"a {frame_type} frame")
        return frame

    async def wait_closed(self, timeout: float = 15) -> None:
        await eventually(lambda: self.closed, timeout, "the connection to close")


class ProtocolPeer:
    def __init__(
        self,
        server_id: str = "srv-1",
        org_id: str = "org-1",
        key: nacl.signing.SigningKey | None = None,
        port: int | None = None,
        registry_actions: Iterable[str] = DEFAULT_ACTIONS,
        registry_version: int = 1,
        heartbeat_interval_ms: int = 300,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server_id = server_id
        self.org_id = org_id
        self.key = key or protocol.new_signing_key()
        self.port = port or free_port()
        self.registry_actions = list(registry_actions)
        self.registry_version = registry_version
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.ssl_context = ssl_context
        self.rotations: list[protocol.Frame] = []  # every announcement, oldest first
        self.sessions: list[PeerSession] = []  # every connection, in order
        self.agent_keys: set[str] | None = None  # None: accept any agent key
        self.handshake_errors: list[str] = []
        self._server: Server | None = None

    @property
    def public_key(self) -> str:
        return protocol.public_key_of(self.key)

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/agent/ws"

    async def start(self) -> ProtocolPeer:
        # A free port may still be in TIME_WAIT after a restart on the same port: retry.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = await serve(
                    self._handle,
                    "127.0.0.1",
                    self.port,
                    ssl=self.ssl_context,
                    max_size=4 * protocol.MAX_FRAME_BYTES,
                    compression=None,
                )
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ProtocolPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- frames the control plane makes ----------------------------------------------

    def rotate_key(self) -> protocol.Frame:
        """A new CP key, announced with a signature by the current one."""
        new = protocol.new_signing_key()
        frame = protocol.make_frame(
            "key_rotation",
            {
                "old_public_key": self.public_key,
                "new_public_key": protocol.public_key_of(new),
                "issued_at": protocol.now_ms(),
            },
            self.key,
        )
        self.rotations.append(frame)
        self.key = new
        return frame

    def registry_frame(
        self, actions: Iterable[str] | None = None, version: int | None = None
    ) -> protocol.Frame:
        return protocol.make_frame(
            "registry",
            {
                "server_id": self.server_id,
                "version": self.registry_version if version is None else version,
                "issued_at": protocol.now_ms(),
                "actions": list(self.registry_actions if actions is None else actions),
            },
            self.key,
        )

    def command(
        self,
        action: str,
        params: dict[str, Any] | None = None,
        key: nacl.signing.SigningKey | None = None,
        server_id: str | None = None,
        **kwargs: Any,
    ) -> protocol.Frame:
        return protocol.new_command(
            key or self.key, server_id or self.server_id, action, params or {}, **kwargs
        )

    # -- waiting -----------------------------------------------------------------------

    def authorized_sessions(self) -> list[PeerSession]:
        return [s for s in self.sessions if s.authorized]

    async def session(self, after: int = 0, timeout: float = 20) -> PeerSession:
        """The first authorized session whose index is >= `after`, still open."""

        def found() -> PeerSession | None:
            return next((s for s in self.sessions[after:] if s.authorized and not s.closed), None)

        session: PeerSession = await eventually(found, timeout, "an authorized agent session")
        return session

    async def result(self, command_id: str, timeout: float = 20) -> protocol.Frame:
        """The agent's result for a command, from whichever session carried it."""

        def found() -> protocol.Frame | None:
            for s in self.sessions:
                for f in s.of_type("result"):
                    if f.body["command_id"] == command_id:
                        return f
            return None

        frame: protocol.Frame = await eventually(found, timeout, f"result of {command_id}")
        return frame

    def frames(self, frame_type: str) -> list[tuple[PeerSession, protocol.Frame]]:
        return [(s, f) for s in self.sessions for f in s.of_type(frame_type)]

    # -- the handshake -------------------------------------------------------------------

    async def _fail(self, session: PeerSession, code: str, message: str) -> None:
        self.handshake_errors.append(f"{code}: {message}")
        await session.send(protocol.error_frame(code, message))
        await session.ws.close(protocol.close_code(code), code)

    async def _handle(self, ws: ServerConnection) -> None:
        session = PeerSession(ws)
        self.sessions.append(session)
        try:
            await self._handshake(session)
            if session.authorized:
                async for message in ws:
                    try:
                        session.frames.append(protocol.parse_frame(message))
                    except protocol.ProtocolError:
                        session.bad_frames.append(str(message)[:200])
        except ConnectionClosed:
            pass
        finally:
            session.close_code = ws.close_code
            session.close_reason = ws.close_reason
            session.closed = True

    async def _handshake(self, session: PeerSession) -> None:
        ws = session.ws
        hello = protocol.parse_frame(await ws.recv())
        if hello.type != "hello":
            await self._fail(session, "FRM005", f"expected hello, got {hello.type}")
            return
        session.hello = hello.body
        if self.agent_keys is not None and hello.body["public_key"] not in self.agent_keys:
            await self._fail(session, "AUT002", "not this server's agent key")
            return
        pinned = hello.body["control_plane_key"]
        if pinned != self.public_key:
            chain = [i for i, f in enumerate(self.rotations) if f.body["old_public_key"] == pinned]
            if not chain:
                await self._fail(session, "KEY001", "the agent pinned a key we never had")
                return
            for frame in self.rotations[chain[0] :]:
                await session.send(frame)
        session_id = protocol.new_id()
        nonce = protocol.new_nonce()
        await session.send(
            protocol.make_frame(
                "challenge",
                {
                    "server_id": self.server_id,
                    "session_id": session_id,
                    "nonce": nonce,
                    "issued_at": protocol.now_ms(),
                },
                self.key,
            )
        )
        auth = protocol.parse_frame(await ws.recv())
        if auth.type != "auth":
            await self._fail(session, "FRM005", f"expected auth, got {auth.type}")
            return
        try:
            protocol.verify(hello.body["public_key"], "auth", auth.body, auth.sig)
        except protocol.ProtocolError:
            await self._fail(session, "AUT003", "auth does not verify")
            return
        if auth.body["nonce"] != nonce or auth.body["session_id"] != session_id:
            await self._fail(session, "AUT003", "auth for another challenge")
            return
        session.frames.append(auth)
        session.session_id = session_id
        await session.send(
            protocol.make_frame(
                "authorized",
                {
                    "server_id": self.server_id,
                    "session_id": session_id,
                    "issued_at": protocol.now_ms(),
                    "heartbeat_interval_ms": self.heartbeat_interval_ms,
                },
                self.key,
            )
        )
        await session.send(self.registry_frame())
        session.authorized = True


# -- the real agent process ------------------------------------------------------------


def make_state_dir(state_dir: Path, peer: ProtocolPeer, **config: Any) -> nacl.signing.SigningKey:
    """A registered agent's state directory, written through the agent's own API."""
    ensure_state_dir(state_dir)
    key = create_identity(state_dir)
    AgentConfig(
        url=f"http://127.0.0.1:{peer.port}",
        ws_url=peer.url,
        server_id=peer.server_id,
        org_id=peer.org_id,
        control_plane_key=peer.public_key,
        **config,
    ).save(state_dir)
    AgentState.open(state_dir).close()
    return key


def install_agent_plugin(source: Path, base: Path) -> Path:
    """pip-install the agent plugin at `source` into a directory for PYTHONPATH (once)."""
    site = base / f"agent-plugin-{source.name}"
    installed = site / ".serverflow-testkit-installed"
    if not installed.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--disable-pip-version-check",
                "-q",
                "install",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(site),
                str(source),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        installed.touch()
    return site


def agent_env(site: Path | None, marker_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    env["SERVERFLOW_TEST_MARKER_DIR"] = str(marker_dir)
    env.update(extra)
    return env


def register_agent(
    url: str,
    token: str,
    state_dir: Path,
    env: dict[str, str] | None = None,
    deploy: dict[str, Any] | None = None,
) -> AgentConfig:
    """`serverflow-agent register` (as install.sh runs it), then the `deploy` section of
    agent.json if given."""
    registered = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverflow_agent",
            "register",
            "--url",
            url,
            "--token",
            token,
            "--state-dir",
            str(state_dir),
        ],
        env=env
        if env is not None
        else {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if registered.returncode != 0:
        raise AssertionError(f"register failed:\n{registered.stdout}{registered.stderr}")
    config = AgentConfig.load(state_dir)
    if deploy is not None:
        config = dataclasses.replace(config, deploy=deploy)
        config.save(state_dir)
    return config


class AgentProcess:
    """`serverflow-agent run` as a real process; its log goes to a file."""

    def __init__(self, state_dir: Path, env: dict[str, str], log_path: Path) -> None:
        self.state_dir = state_dir
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> AgentProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serverflow_agent",
                    "run",
                    "--state-dir",
                    str(self.state_dir),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    async def exit_code(self, timeout: float = 15) -> int:
        """Wait (without blocking the event loop, where the peer runs) for the exit."""
        assert self.process is not None
        process = self.process
        await eventually(lambda: process.poll() is not None, timeout, "the agent to exit")
        return int(process.returncode)

    async def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM, and let the peer answer the closing handshake meanwhile."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await self.exit_code(timeout)
            except AssertionError:
                self.kill()
        return self.process.returncode

    def stop(self) -> int | None:
        if self.process is None:
            return None
        stop_process(self.process)
        return self.process.returncode


@dataclass
class Rig:
    """A peer, a real agent connected to it, and the directories they use."""

    peer: ProtocolPeer
    agent: AgentProcess
    state_dir: Path
    marker_dir: Path
    agent_key: nacl.signing.SigningKey

    @property
    def agent_public_key(self) -> str:
        return protocol.public_key_of(self.agent_key)

    async def run(self, frame: protocol.Frame, timeout: float = 20) -> dict[str, Any]:
        """Send a command on the current session; return the verified result body."""
        session = await self.peer.session()
        await session.send(frame)
        result = await self.peer.result(frame.body["id"], timeout)
        protocol.verify(self.agent_public_key, "result", result.body, result.sig)
        return result.body


@asynccontextmanager
async def running_agent(
    tmp_path: Path,
    site: Path | None,
    peer: ProtocolPeer | None = None,
    config: dict[str, Any] | None = None,
    wait: bool = True,
) -> AsyncIterator[Rig]:
    peer = peer or ProtocolPeer()
    state_dir = tmp_path / "agent-state"
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir(exist_ok=True)
    key = make_state_dir(state_dir, peer, **(config or {}))
    agent = AgentProcess(state_dir, agent_env(site, marker_dir), tmp_path / "agent.log")
    await peer.start()
    try:
        agent.start()
        rig = Rig(peer, agent, state_dir, marker_dir, key)
        if wait:
            try:
                await peer.session()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nagent log:\n{agent.log()}") from None
        yield rig
    finally:
        await agent.terminate()
        await peer.stop()


def self_signed_cert(directory: Path, name: str = "cp") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost made by openssl, and its private key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
