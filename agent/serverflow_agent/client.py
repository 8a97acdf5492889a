"""The agent's connection to the control plane: handshake, heartbeats, signed commands,
key rotation, and reconnecting forever.

Frame order on each connection (docs/protocol.md has the full story):

    agent: hello
    CP:    key_rotation*      (only when the agent pinned a retired key)
    CP:    challenge
    agent: auth
    CP:    authorized
    CP:    registry, command, key_rotation, agent_key_accepted   (any order, any number)
    agent: heartbeat, result, event, agent_key                   (any order, any number)

Anything the control plane sends that fails to parse, or that is not expected at that
point, makes the agent send an `error` frame and close; it then reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import nacl.signing
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from serverflow_agent import __version__
from serverflow_agent.config import AgentConfig
from serverflow_agent.executor import Executor, Outcome
from serverflow_agent.identity import (
    IdentityError,
    load_pending,
    pending_path,
    replace_identity,
)
from serverflow_agent.metrics import collect
from serverflow_agent.progress import Coalescer
from serverflow_agent.renewal import EVENT_KIND as RENEWAL_EVENT
from serverflow_agent.renewal import RENEW_ACTION, Renewer
from serverflow_agent.state import AgentState, SignedRegistry
from serverflow_agent.tlspin import check_ssl_object, client_context
from serverflow_contract import protocol
from serverflow_contract.actions import ActionSpec
from serverflow_contract.protocol import ProtocolError
from serverflow_contract.schema import SchemaError, check_schema, validate
from serverflow_contract.tlspin import TlsPinError

log = logging.getLogger("serverflow_agent")

HANDSHAKE_TIMEOUT_S = 10.0
STABLE_SESSION_S = 30.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
MAX_CONCURRENT_COMMANDS = 8
OUTBOX_LIMIT = 200
PRUNE_EVERY_S = 60.0
# Progress events: at most PROGRESS_FRAMES frames every PROGRESS_TICK_S per command; a
# faster producer gets its lines joined into fewer frames (serverflow_agent.progress).
PROGRESS_FRAMES = 20
PROGRESS_TICK_S = 0.1
PROGRESS_FLUSH_S = 5.0
# The transport accepts up to twice the protocol limit so that a frame slightly over it
# is answered with a clear FRM001 error frame; anything larger is cut off by websockets
# itself (close code 1009), which bounds the memory a peer can make us allocate.
TRANSPORT_MAX_BYTES = 2 * protocol.MAX_FRAME_BYTES


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: a restarted control plane is not stormed."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 30))
    return (rng or random).uniform(0, ceiling)


class SessionEnd(Exception):
    """The session is over; the message says why (for the log)."""


class PeerError(SessionEnd):
    """The control plane sent an `error` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"control plane error {code}: {message}")
        self.code = code


class Refusal(Exception):
    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message or protocol.ERRORS.get(code, code)
        super().__init__(f"{code}: {self.message}")


def _sendable(text: str) -> str:
    """Text safe to put in a frame: lone surrogates (from a peer's junk) become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")


def usable_actions(specs: Iterable[ActionSpec]) -> dict[str, ActionSpec]:
    """The local registry, minus actions the protocol could not describe or validate."""
    usable: dict[str, ActionSpec] = {}
    for spec in specs:
        try:
            validate(spec.describe(), protocol.ACTION_DESCRIPTION)
            check_schema(spec.params_schema)
            protocol.canonical(spec.describe())
        except (SchemaError, ValueError) as exc:
            log.error("action %s left out: %s", spec.name, exc)
            continue
        usable[spec.name] = spec
    limit = protocol.BODY_SCHEMAS["auth"]["properties"]["actions"]["maxItems"]
    if len(usable) > limit:
        # The auth frame cannot describe more; better fewer actions than no connection.
        log.error("%d actions registered, only %d can be announced", len(usable), limit)
        usable = {name: usable[name] for name in sorted(usable)[:limit]}
    return usable


class ProgressRelay:
    """Forwards one command's progress lines as signed `event` frames of kind `progress`.

    `push` (called by the executor for each line) only queues; a task sends, at a bounded
    rate, joining lines when they come faster than that. While the agent is offline the
    lines are dropped: results are kept for the next session, progress is not.
    """

    def __init__(self, agent: Agent, command_id: str) -> None:
        self.agent = agent
        self.command_id = command_id
        self.backlog = Coalescer(frames_per_take=PROGRESS_FRAMES)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def push(self, item: dict[str, Any]) -> None:
        if self.agent._ws is None:
            return
        self.backlog.push(item)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.backlog):
                await self._send(self.backlog.take())
                if len(self.backlog):
                    await asyncio.sleep(PROGRESS_TICK_S)
            self._idle.set()

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        for item in batch:
            data = {
                "command_id": self.command_id,
                "app": item.get("app"),
                "stage": item.get("stage"),
                "line": _sendable(item.get("line", "")),
            }
            try:
                sent = await self.agent._send_event("progress", data)
            except Exception:  # progress is best effort
                log.exception("progress event not sent")
                sent = False
            if not sent:
                return

    async def close(self) -> None:
        """Send what is still queued (for a few seconds at most), then stop."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), PROGRESS_FLUSH_S)
        except TimeoutError:
            log.warning("command %s: progress lines left unsent", self.command_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _pinned_connection(pin: str | None) -> type[ClientConnection]:
    class PinnedConnection(ClientConnection):
        async def handshake(self, *args: Any, **kwargs: Any) -> None:
            # TLS is up but no HTTP byte has been sent yet: refuse an unpinned server here.
            check_ssl_object(self.transport.get_extra_info("ssl_object"), pin)
            await super().handshake(*args, **kwargs)

    return PinnedConnection


class Agent:
    """One agent process: a connection loop plus the state that outlives connections."""

    def __init__(
        self,
        state_dir: Path,
        config: AgentConfig,
        identity: nacl.signing.SigningKey,
        state: AgentState,
        actions: Iterable[ActionSpec],
        executor: Executor | None = None,
        renew_interval_s: float | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.config = config
        self.identity = identity
        self.state = state
        self.actions = usable_actions(actions)
        self.executor = executor or Executor(state_dir)
        self._registry: SignedRegistry | None = state.registry()
        self._seq = 0
        self._slots: asyncio.Semaphore | None = None
        self._outbox: deque[tuple[str, dict[str, Any]]] = deque(maxlen=OUTBOX_LIMIT)
        self._ws: ClientConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._process = psutil.Process()
        self._last_prune = 0.0
        # Agent-key rotation: the pending key offered in this session, keys refused.
        self._offered: nacl.signing.SigningKey | None = None
        self._rejected: set[str] = set()
        self._hello_with_pending = False
        self.renew_interval_s = renew_interval_s  # None: no certificate renewal timer

    @property
    def public_key(self) -> str:
        return protocol.public_key_of(self.identity)

    # -- the reconnect loop --------------------------------------------------------

    async def run_forever(self) -> None:
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
        self._prune()
        renew = self.actions.get(RENEW_ACTION)
        if renew is not None and self.renew_interval_s:
            renewer = Renewer(self.executor, renew, self.renew_interval_s, self._report_renewal)
            self._spawn(renewer.run())
        attempt = 0
        try:
            while True:
                authorized_at: list[float] = []
                try:
                    await self._connect_once(authorized_at)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The agent must survive anything; a bug here must not stop it.
                    log.exception("disconnected: unexpected error")
                if authorized_at and time.monotonic() - authorized_at[0] > STABLE_SESSION_S:
                    attempt = 0
                delay = backoff_delay(attempt)
                attempt += 1
                log.info("reconnecting in %.2f s (attempt %d)", delay, attempt)
                await asyncio.sleep(delay)
        finally:
            self.executor.kill_all()
            for task in list(self._tasks):
                task.cancel()

    async def _connect_once(self, authorized_at: list[float]) -> None:
        url = self.config.ws_url
        secure = url.startswith("wss://")
        options: dict[str, Any] = {}
        if secure:
            options["ssl"] = client_context(self.config.ca_file)
        log.info("connecting to %s", url)
        try:
            async with connect(
                url,
                max_size=TRANSPORT_MAX_BYTES,
                max_queue=8,
                compression=None,
                open_timeout=HANDSHAKE_TIMEOUT_S,
                close_timeout=2,
                user_agent_header=f"serverflow-agent/{__version__}",
                create_connection=_pinned_connection(self.config.tls_pin if secure else None),
                **options,
            ) as ws:
                await self._session(ws, authorized_at)
        except TlsPinError as exc:
            log.error("disconnected: TLS pin check failed: %s", exc)
        except PeerError as exc:
            log.warning("disconnected: %s", exc)
            self._after_peer_error(exc.code)
        except SessionEnd as exc:
            log.warning("disconnected: %s", exc)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is not None:
                log.warning(
                    "disconnected: connection closed by the control plane (code %s%s)",
                    rcvd.code,
                    f", {rcvd.reason}" if rcvd.reason else "",
                )
            else:
                log.warning("disconnected: connection lost")
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            log.warning("disconnected: cannot connect: %s", exc or type(exc).__name__)
        finally:
            self._ws = None

    # -- one session ---------------------------------------------------------------

    async def _session(self, ws: ClientConnection, authorized_at: list[float]) -> None:
        hello_key = self.identity
        if self._hello_with_pending:
            pending = self._load_pending()
            if pending is not None:
                hello_key = pending
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                interval_ms = await self._handshake(ws, hello_key)
        except TimeoutError:
            await self._fail(
                ws, "AUT004", f"handshake not completed within {HANDSHAKE_TIMEOUT_S:g} s"
            )
        if hello_key is not self.identity:
            self._promote(hello_key, "the control plane already knew it")
        self._hello_with_pending = False
        authorized_at.append(time.monotonic())
        self._ws = ws
        self._offered = None
        log.info(
            "authorized as server %s (agent key %s, control plane key %s, heartbeat %d ms)",
            self.config.server_id,
            protocol.key_id(self.public_key),
            protocol.key_id(self.config.control_plane_key),
            interval_ms,
        )
        await self._flush_outbox(ws)
        heartbeats = asyncio.ensure_future(self._heartbeats(ws, interval_ms))
        try:
            while True:
                frame = await self._recv(ws)
                await self._dispatch(ws, frame)
        finally:
            self._ws = None
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats

    async def _handshake(self, ws: ClientConnection, key: nacl.signing.SigningKey) -> int:
        await ws.send(
            protocol.make_frame(
                "hello",
                {
                    "server_id": self.config.server_id,
                    "org_id": self.config.org_id,
                    "public_key": protocol.public_key_of(key),
                    "control_plane_key": self.config.control_plane_key,
                    "agent_version": __version__,
                    "protocol": protocol.PROTOCOL_VERSION,
                },
            ).encode()
        )
        while True:
            frame = await self._recv(ws)
            if frame.type == "key_rotation":
                await self._rotation(ws, frame)
            elif frame.type == "challenge":
                break
            else:
                await self._unexpected(ws, frame, "a challenge")
        challenge = frame.body
        await self._verify(ws, frame)
        if challenge["server_id"] != self.config.server_id:
            await self._fail(ws, "FRM004", "challenge addressed to another server")
        skew = abs(challenge["issued_at"] - protocol.now_ms())
        if skew > protocol.CLOCK_SKEW_MS:
            await self._fail(
                ws,
                "FRM004",
                f"challenge issued_at is {skew} ms away from the "
                f"agent's clock (allowed {protocol.CLOCK_SKEW_MS}); check the clocks",
            )
        await ws.send(
            protocol.make_frame(
                "auth",
                {
                    "server_id": self.config.server_id,
                    "session_id": challenge["session_id"],
                    "nonce": challenge["nonce"],
                    "actions": [spec.describe() for spec in self.actions.values()],
                },
                key,
            ).encode()
        )
        frame = await self._recv(ws)
        if frame.type != "authorized":
            await self._unexpected(ws, frame, "authorized")
        await self._verify(ws, frame)
        body = frame.body
        if (
            body["server_id"] != self.config.server_id
            or body["session_id"] != challenge["session_id"]
        ):
            await self._fail(ws, "FRM004", "authorized for another server or session")
        return int(self.config.heartbeat_interval_ms or body["heartbeat_interval_ms"])

    async def _dispatch(self, ws: ClientConnection, frame: protocol.Frame) -> None:
        if frame.type == "command":
            await self._command(frame)
        elif frame.type == "registry":
            await self._store_registry(ws, frame)
        elif frame.type == "key_rotation":
            await self._rotation(ws, frame)
        elif frame.type == "agent_key_accepted":
            await self._agent_key_accepted(ws, frame)
        else:
            await self._unexpected(ws, frame, "a command, registry or key frame")

    # -- frames in and out ---------------------------------------------------------

    async def _recv(self, ws: ClientConnection) -> protocol.Frame:
        message = await ws.recv()
        try:
            frame = protocol.parse_frame(message)
        except ProtocolError as exc:
            await self._fail(ws, exc.code, exc.message)
        if frame.type == "error":
            with contextlib.suppress(Exception):
                await ws.close()
            raise PeerError(frame.body["code"], frame.body["message"])
        return frame

    async def _fail(self, ws: ClientConnection, code: str, message: str | None = None) -> NoReturn:
        """Tell the control plane what was wrong, close, and end the session."""
        text = _sendable(message or protocol.ERRORS.get(code, code))[:1000]
        with contextlib.suppress(Exception):
            await ws.send(protocol.error_frame(code, text).encode())
        with contextlib.suppress(Exception):
            await ws.close(protocol.close_code(code), code)
        raise SessionEnd(f"sent error {code}: {text}")

    async def _unexpected(
        self, ws: ClientConnection, frame: protocol.Frame, wanted: str
    ) -> NoReturn:
        await self._fail(ws, "FRM005", f"unexpected {frame.type} frame (expected {wanted})")

    async def _verify(self, ws: ClientConnection, frame: protocol.Frame) -> None:
        try:
            frame.verify(self.config.control_plane_key)
        except ProtocolError:
            await self._fail(
                ws,
                "SIG001",
                f"{frame.type} frame does not verify with the "
                f"pinned control plane key {protocol.key_id(self.config.control_plane_key)}",
            )

    async def _send_signed(
        self, ws: ClientConnection, frame_type: str, body: dict[str, Any]
    ) -> None:
        await ws.send(protocol.make_frame(frame_type, body, self.identity).encode())

    async def _emit(self, frame_type: str, body: dict[str, Any]) -> None:
        """Send now if connected, else keep it for the next session (results survive blips)."""
        ws = self._ws
        if ws is not None:
            try:
                await self._send_signed(ws, frame_type, body)
                return
            except ConnectionClosed:
                pass
        if len(self._outbox) == self._outbox.maxlen:
            log.warning("outbox full: dropping the oldest unsent %s", self._outbox[0][0])
        self._outbox.append((frame_type, body))

    def _event_body(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "server_id": self.config.server_id,
            "kind": kind,
            "sent_at": protocol.now_ms(),
            "data": data,
        }

    async def _send_event(self, kind: str, data: dict[str, Any]) -> bool:
        """Send an event if connected; events are not kept for the next session."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await self._send_signed(ws, "event", self._event_body(kind, data))
        except ConnectionClosed:
            return False
        return True

    async def _report_renewal(self, report: dict[str, Any]) -> None:
        # Kept in the outbox while disconnected: a renewal failure must reach a person.
        await self._emit("event", self._event_body(RENEWAL_EVENT, report))

    async def _flush_outbox(self, ws: ClientConnection) -> None:
        while self._outbox:
            frame_type, body = self._outbox[0]
            await self._send_signed(ws, frame_type, body)
            self._outbox.popleft()

    # -- heartbeats ----------------------------------------------------------------

    async def _heartbeats(self, ws: ClientConnection, interval_ms: int) -> None:
        psutil.cpu_percent(interval=None)  # prime the non-blocking CPU sample
        while True:
            try:
                self._seq += 1
                body = {
                    "server_id": self.config.server_id,
                    "seq": self._seq,
                    "sent_at": protocol.now_ms(),
                    "metrics": collect(self._process),
                }
                await self._send_signed(ws, "heartbeat", body)
                await self._offer_pending_key(ws)
                self._prune()
            except ConnectionClosed:
                return
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(interval_ms / 1000)

    def _prune(self) -> None:
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_S or not self._last_prune:
            self._last_prune = time.monotonic()
            removed = self.state.prune_nonces()
            if removed:
                log.debug("pruned %d expired nonces", removed)

    # -- commands ------------------------------------------------------------------

    async def _command(self, frame: protocol.Frame) -> None:
        """Check a command synchronously (so a replay racing its original is caught), then
        run it in the background."""
        body = frame.body
        received = protocol.now_ms()
        try:
            spec = self._check_command(frame)
        except Refusal as refusal:
            log.warning(
                "refused command %s (action %s): %s %s",
                body["id"],
                body["action"],
                refusal.code,
                refusal.message,
            )
            result = self._result_body(
                body, received, received, "refused", code=refusal.code, message=refusal.message
            )
            await self._emit("result", result)
            return
        log.info("running command %s: %s", body["id"], spec.name)
        self._spawn(self._run(body, spec))

    def _check_command(self, frame: protocol.Frame) -> ActionSpec:
        body = frame.body
        try:
            frame.verify(self.config.control_plane_key)
        except ProtocolError as exc:
            raise Refusal("SIG001") from exc
        if body["server_id"] != self.config.server_id:
            raise Refusal("CMD002")
        try:
            protocol.check_freshness(body)
        except ProtocolError as exc:
            raise Refusal(exc.code) from exc
        # Recorded (and committed) before anything runs: a crash mid-action cannot reopen
        # the window for a replay.
        if not self.state.remember_nonce(body["nonce"], body["expires_at"], body["id"]):
            raise Refusal("CMD005")
        spec = self.actions.get(body["action"])
        if spec is None:
            raise Refusal("CMD006", f"action {body['action']!r} is unknown to this agent")
        if self._registry is None or spec.name not in self._registry.actions:
            raise Refusal("CMD007", f"action {spec.name!r} is not in the signed action registry")
        try:
            validate(body["params"], spec.params_schema)
        except SchemaError as exc:
            raise Refusal("CMD008", f"params: {exc}") from exc
        return spec

    async def _run(self, body: dict[str, Any], spec: ActionSpec) -> None:
        assert self._slots is not None
        async with self._slots:
            relay = ProgressRelay(self, body["id"])
            started = protocol.now_ms()
            try:
                outcome = await self.executor.run(spec, body["params"], progress=relay.push)
            except Exception as exc:
                log.exception("command %s failed to run", body["id"])
                outcome = Outcome("error", code="CMD011", message=f"agent error: {exc}")
            finished = protocol.now_ms()
            # The last lines go out before the result, so a follower sees them first.
            await relay.close()
        if outcome.status == "ok":
            log.info("command %s (%s) finished", body["id"], spec.name)
        else:
            log.warning("command %s (%s) failed: %s", body["id"], spec.name, outcome.code)
        result = self._result_body(
            body,
            started,
            finished,
            outcome.status,
            outcome.code,
            outcome.message,
            outcome.output,
            has_output=True,
        )
        await self._emit("result", result)

    def _result_body(
        self,
        command: dict[str, Any],
        started: int,
        finished: int,
        status: str,
        code: str | None = None,
        message: str | None = None,
        output: Any = None,
        has_output: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command_id": command["id"],
            "server_id": self.config.server_id,
            "status": status,
            "started_at": started,
            "finished_at": finished,
        }
        if code:
            body["code"] = code
        if message:
            body["message"] = _sendable(message)[:4000]
        if has_output and status == "ok":
            body["output"] = output
            try:
                encoded = protocol.canonical(body)
                # The control plane re-encodes what it parsed to check our signature: an
                # output that does not survive that would arrive unverifiable.
                if protocol.canonical(protocol.loads(encoded.decode())) != encoded:
                    raise ValueError("it does not survive a JSON round trip")
                size = len(encoded)
            except ValueError as exc:
                return self._result_body(
                    command,
                    started,
                    finished,
                    "error",
                    "CMD011",
                    f"output has no canonical JSON form: {exc}",
                )
            if size > protocol.MAX_FRAME_BYTES - 1024:
                return self._result_body(
                    command,
                    started,
                    finished,
                    "error",
                    "CMD011",
                    "output is larger than a frame may be",
                )
        return body

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- registry and keys ---------------------------------------------------------

    async def _store_registry(self, ws: ClientConnection, frame: protocol.Frame) -> None:
        await self._verify(ws, frame)
        body = frame.body
        if body["server_id"] != self.config.server_id:
            await self._fail(ws, "FRM004", "registry signed for another server")
        current = self._registry.version if self._registry else -1
        if body["version"] < current:
            await self._fail(
                ws,
                "REG001",
                f"registry version {body['version']} is older than the accepted version {current}",
            )
        assert frame.sig is not None
        self.state.store_registry(body, frame.sig)
        self._registry = SignedRegistry(body["version"], body, frame.sig)
        log.info(
            "signed action registry version %d: %d actions", body["version"], len(body["actions"])
        )

    async def _rotation(self, ws: ClientConnection, frame: protocol.Frame) -> None:
        body = frame.body
        pinned = self.config.control_plane_key
        if body["new_public_key"] == pinned:
            return  # already applied (e.g. announced again at a reconnect)
        if body["old_public_key"] != pinned:
            await self._fail(
                ws,
                "KEY001",
                f"key rotation does not start from the pinned key {protocol.key_id(pinned)}",
            )
        try:
            protocol.verify(pinned, "key_rotation", body, frame.sig)
            nacl.signing.VerifyKey(protocol.b64d(body["new_public_key"]))
        except (ProtocolError, ValueError, TypeError):
            await self._fail(ws, "KEY001")
        self.config.control_plane_key = body["new_public_key"]
        self.config.save(self.state_dir)
        log.info(
            "control plane key rotated: %s -> %s",
            protocol.key_id(pinned),
            protocol.key_id(body["new_public_key"]),
        )

    def _load_pending(self) -> nacl.signing.SigningKey | None:
        try:
            return load_pending(self.state_dir)
        except IdentityError as exc:
            log.error("pending agent key unusable: %s", exc)
            return None

    async def _offer_pending_key(self, ws: ClientConnection) -> None:
        if self._offered is not None or not pending_path(self.state_dir).exists():
            return
        pending = self._load_pending()
        if pending is None:
            return
        new_public = protocol.public_key_of(pending)
        if new_public == self.public_key or new_public in self._rejected:
            return
        issued = protocol.now_ms()
        proof = protocol.sign(
            pending,
            "agent_key_proof",
            {
                "server_id": self.config.server_id,
                "new_public_key": new_public,
                "issued_at": issued,
            },
        )
        await self._send_signed(
            ws,
            "agent_key",
            {
                "server_id": self.config.server_id,
                "old_public_key": self.public_key,
                "new_public_key": new_public,
                "issued_at": issued,
                "proof": proof,
            },
        )
        self._offered = pending
        log.info("offered new agent key %s to the control plane", protocol.key_id(new_public))

    async def _agent_key_accepted(self, ws: ClientConnection, frame: protocol.Frame) -> None:
        await self._verify(ws, frame)
        body = frame.body
        if body["server_id"] != self.config.server_id:
            await self._fail(ws, "FRM004", "agent_key_accepted for another server")
        offered = self._offered
        if offered is None or protocol.public_key_of(offered) != body["public_key"]:
            log.warning(
                "agent_key_accepted for key %s, which this agent did not offer; ignored",
                protocol.key_id(body["public_key"]),
            )
            return
        self._promote(offered, "accepted by the control plane")

    def _promote(self, key: nacl.signing.SigningKey, why: str) -> None:
        old = self.public_key
        # Write the key we offered (not whatever identity.next.key holds now: rotate-key
        # may have replaced it meanwhile), then drop the pending file if it is that key.
        replace_identity(self.state_dir, key)
        self.identity = key
        self._offered = None
        pending = self._load_pending()
        if pending is not None and protocol.public_key_of(pending) == self.public_key:
            pending_path(self.state_dir).unlink(missing_ok=True)
        log.info(
            "agent key rotated (%s): %s -> %s",
            why,
            protocol.key_id(old),
            protocol.key_id(self.public_key),
        )

    def _after_peer_error(self, code: str) -> None:
        if code == "KEY001" and self._offered is not None:
            refused = protocol.public_key_of(self._offered)
            self._rejected.add(refused)
            log.error(
                "the control plane refused the new agent key %s; it will not be offered "
                "again by this process",
                protocol.key_id(refused),
            )
        elif code == "AUT002" and pending_path(self.state_dir).exists():
            # The control plane may have accepted our pending key while we crashed before
            # promoting it: alternate between the two keys until one is recognised.
            self._hello_with_pending = not self._hello_with_pending
        self._offered = None
