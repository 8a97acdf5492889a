"""Connected agents: handshake, signed frames in both directions, heartbeats, presence.

One hub per control-plane process. Every frame an agent sends is verified with that
server's agent key; every frame sent to an agent is signed with the current control-plane
key. Database work happens in short scoped transactions, never while waiting on an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from serverflow import audit, signing
from serverflow.agents.registry import registry_body
from serverflow.errors import AgentUnavailable
from serverflow.events import EventBus, LiveEvent, record
from serverflow.keys import Cipher
from serverflow.models import (
    Command,
    CommandStatus,
    Heartbeat,
    Organization,
    Server,
    ServerStatus,
)
from serverflow.refusals import RefusalLog
from serverflow.settings import Settings
from serverflow.tenancy import scoped
from serverflow_contract import protocol
from serverflow_contract.protocol import Frame, ProtocolError

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0


class Transport(Protocol):
    """What the hub needs from a WebSocket (Quart's `websocket` fits)."""

    async def receive(self) -> str | bytes: ...
    async def send(self, data: str) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


# Refusals an agent reports that say someone sent it a command it must not run.
AGENT_SECURITY_REFUSALS = frozenset(
    {"SIG001", "CMD002", "CMD003", "CMD004", "CMD005", "CMD007", "CMD009"}
)


def remote_address(transport: Transport) -> str:
    """The peer's address as the ASGI server saw it (Quart's websocket has it)."""
    return str(getattr(transport, "remote_addr", None) or "unknown")[:64]


@dataclass
class _Claim:
    """Who a connecting peer says it is, once the server it names is found."""

    org_id: uuid.UUID | None = None
    server_id: uuid.UUID | None = None
    claimed: str = ""  # "ORG/SERVER" as the hello said, checked or not
    during_session: bool = False


@dataclass(eq=False)
class AgentSession:
    server_id: uuid.UUID
    org_id: uuid.UUID
    session_id: str
    public_key: str
    transport: Transport
    outbox: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(1000))
    last_seq: int = -1
    last_heard: float = field(default_factory=time.monotonic)
    pending: set[str] = field(default_factory=set)  # commands sent, no result yet
    closed: bool = False
    online: asyncio.Task[Server] | None = None


@dataclass(frozen=True)
class Reply:
    """A verified result frame from an agent, and when it arrived."""

    body: dict[str, Any]
    sig: str | None
    received: float


@dataclass(frozen=True)
class Outcome:
    command: Command
    latency_ms: float | None  # from signing to the verified result, on this control plane


RESULT_FIELDS = [
    "status",
    "code",
    "message",
    "output",
    "result_signature",
    "result_body",
    "finished_at",
]


def _result_fields(reply: Reply, now: datetime | None = None) -> dict[str, Any]:
    body = reply.body
    return {
        "status": CommandStatus(body["status"]),
        "code": body.get("code"),
        "message": body.get("message"),
        "output": body.get("output"),
        "result_signature": reply.sig,
        "result_body": body,
        "finished_at": now or datetime.now(UTC),
    }


@dataclass
class _Beat:
    org_id: uuid.UUID
    server_id: uuid.UUID
    at: datetime
    metrics: dict[str, Any]


class AgentHub:
    def __init__(
        self,
        settings: Settings,
        cipher: Cipher,
        bus: EventBus,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.settings = settings
        self.cipher = cipher
        self.bus = bus
        self.refusals = refusals or RefusalLog()
        self.sessions: dict[uuid.UUID, AgentSession] = {}
        self._waiters: dict[str, asyncio.Future[Reply]] = {}
        self._progress: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._beats: list[_Beat] = []
        self._persisted: dict[uuid.UUID, float] = {}  # server id -> when its row was updated
        self._key: signing.ActiveKey | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        # Called (in the background) each time an agent is authorized: e.g. the deployer
        # re-sends the server's desired state, so apps come back after a server reboot.
        self.on_connect: Callable[[uuid.UUID, Server], Awaitable[None]] | None = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def interval_ms(self) -> int:
        return self.settings.heartbeat_interval_ms

    @property
    def key(self) -> signing.ActiveKey:
        if self._key is None:
            raise RuntimeError("agent hub not started")
        return self._key

    async def start(self) -> None:
        self._key = await signing.current_key(self.cipher)
        log.info("control-plane signing key %s", self._key.key_id)
        await self._sweep_database(startup=True)
        for loop in (self._flush_loop, self._presence_loop, self._key_loop, self._prune_loop):
            self._tasks.append(asyncio.create_task(loop(), name=loop.__name__))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        sessions = list(self.sessions.values())
        for session in sessions:
            await self._close(session, 1001, "control plane shutting down")
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()
        # Their servers are offline now, as far as this instance knows; an agent that
        # reconnects to another instance is marked online again there.
        for session in sessions:
            if self.sessions.get(session.server_id) is session:
                session.closed = True
                self._spawn(self._gone(session))
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- connection ----------------------------------------------------------------

    async def serve(self, transport: Transport) -> None:
        """Run one agent connection from handshake to disconnect.

        Quart cancels this coroutine when the agent goes away, at any await. So database
        writes run in their own tasks (a cancelled caller never leaves them half done) and
        `_gone`, which always runs, waits for them before deciding about presence.
        """
        claim = _Claim()
        try:
            hello, auth = await asyncio.wait_for(
                self._handshake(transport, claim), HANDSHAKE_TIMEOUT
            )
        except TimeoutError:
            await self._refuse(transport, ProtocolError("AUT004"), claim)
            return
        except ProtocolError as exc:
            await self._refuse(transport, exc, claim)
            return
        session = AgentSession(
            server_id=uuid.UUID(hello["server_id"]),
            org_id=uuid.UUID(hello["org_id"]),
            session_id=auth["session_id"],
            public_key=hello["public_key"],
            transport=transport,
        )
        session.online = asyncio.create_task(self._come_online(session, hello, auth))
        writer: asyncio.Task[None] | None = None
        try:
            server = await asyncio.shield(session.online)
            authorized = {
                "server_id": str(session.server_id),
                "session_id": session.session_id,
                "issued_at": protocol.now_ms(),
                "heartbeat_interval_ms": self.interval_ms,
            }
            await transport.send(
                protocol.make_frame("authorized", authorized, self.key.key).encode()
            )
            await transport.send(self._registry_frame(server).encode())
            previous = self.sessions.get(session.server_id)
            self.sessions[session.server_id] = session
            if previous is not None:
                await self._close(previous, protocol.CLOSE_POLICY, "replaced by a newer connection")
            writer = asyncio.create_task(self._write(session))
            if self.on_connect is not None:
                self._spawn(self.on_connect(session.org_id, server))
            while True:
                data = await transport.receive()
                session.last_heard = time.monotonic()
                await self._handle(session, protocol.parse_frame(data))
        except ProtocolError as exc:
            log.warning(
                "agent %s: %s %s; closing",
                session.server_id,
                exc.code,
                exc.message,
                extra={"code": exc.code},
            )
            claim.during_session = True
            await self._refuse(transport, exc, claim)
        finally:
            if writer is not None:
                writer.cancel()
            session.closed = True
            for command_id in list(session.pending):  # nobody will answer these now
                waiter = self._waiters.get(command_id)
                if waiter is not None and not waiter.done():
                    waiter.cancel()
            self._spawn(self._gone(session))

    async def _refuse(self, transport: Transport, exc: ProtocolError, claim: _Claim) -> None:
        log.warning(
            "agent connection refused: %s %s", exc.code, exc.message, extra={"code": exc.code}
        )
        await self.refusals.note(
            claim.org_id or audit.INSTANCE,
            "agent.session_closed" if claim.during_session else "agent.handshake_refused",
            exc.code,
            actor=f"agent:{claim.server_id or 'unknown'}",
            source=remote_address(transport),
            # A server not found is named as claimed: refusals claiming different
            # servers are different kinds, each counted on its own.
            target=(
                f"server:{claim.server_id}"
                if claim.server_id
                else (f"claimed:{claim.claimed[:200]}" if claim.claimed else "")
            ),
            reason=exc.message,
            details={"claimed": claim.claimed},
        )
        try:
            await transport.send(protocol.error_frame(exc.code, exc.message).encode())
            await transport.close(protocol.close_code(exc.code), exc.code)
        except Exception:
            log.debug("could not send the error frame", exc_info=True)

    async def _close(self, session: AgentSession, code: int, reason: str) -> None:
        try:
            await session.transport.close(code, reason)
        except Exception:
            log.debug("close failed", exc_info=True)

    async def _write(self, session: AgentSession) -> None:
        while True:
            data = await session.outbox.get()
            await session.transport.send(data)

    async def _receive(self, transport: Transport, expected: str) -> Frame:
        frame = protocol.parse_frame(await transport.receive())
        if frame.type == "error":
            raise ProtocolError(str(frame.body["code"]), f"agent said: {frame.body['message']}")
        if frame.type != expected:
            raise ProtocolError("FRM005", f"expected {expected}, got {frame.type}")
        return frame

    async def _handshake(
        self, transport: Transport, claim: _Claim
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """hello → [key_rotation*] → challenge → auth; returns the verified hello and auth.
        `claim` learns which server the peer claims to be, once that server is found."""
        hello = (await self._receive(transport, "hello")).body
        if hello["protocol"] != protocol.PROTOCOL_VERSION:
            raise ProtocolError("AUT005", f"protocol {hello['protocol']} is not supported")
        claim.claimed = f"{hello['org_id']}/{hello['server_id']}"[:100]
        try:
            org_id, server_id = uuid.UUID(hello["org_id"]), uuid.UUID(hello["server_id"])
        except ValueError:
            raise ProtocolError("AUT001") from None
        async with scoped(org_id):
            server = await Server.get_or_none(id=server_id)
        if server is None or not server.agent_public_key:
            raise ProtocolError("AUT001")
        claim.org_id, claim.server_id = org_id, server_id
        if hello["public_key"] != server.agent_public_key:
            raise ProtocolError("AUT002")
        key = self.key
        if hello["control_plane_key"] != key.public_key:
            chain = await signing.chain_from(hello["control_plane_key"])
            if chain is None:
                raise ProtocolError("KEY001", "the agent pinned a key this control plane never had")
            for announcement in chain:
                await transport.send(announcement.encode())
        session_id, nonce = protocol.new_id(), protocol.new_nonce()
        challenge = {
            "server_id": str(server_id),
            "session_id": session_id,
            "nonce": nonce,
            "issued_at": protocol.now_ms(),
        }
        await transport.send(protocol.make_frame("challenge", challenge, key.key).encode())
        auth = await self._receive(transport, "auth")
        try:
            protocol.verify(server.agent_public_key, "auth", auth.body, auth.sig)
        except ProtocolError:
            raise ProtocolError("AUT003") from None
        if (auth.body["session_id"], auth.body["nonce"], auth.body["server_id"]) != (
            session_id,
            nonce,
            str(server_id),
        ):
            raise ProtocolError("AUT003", "the response does not answer this challenge")
        return hello, auth.body

    async def _come_online(
        self, session: AgentSession, hello: dict[str, Any], auth: dict[str, Any]
    ) -> Server:
        """Store what the handshake taught us; a new registry version; the online event."""
        async with scoped(session.org_id):
            server = await Server.get(id=session.server_id)
            was = server.status
            server.inventory = auth["actions"]
            server.agent_version = hello["agent_version"]
            server.registry_version += 1
            server.status = ServerStatus.ONLINE
            server.last_seen_at = datetime.now(UTC)
            await server.save(
                update_fields=[
                    "inventory",
                    "agent_version",
                    "registry_version",
                    "status",
                    "last_seen_at",
                ]
            )
        log.info(
            "agent %s (%s) authorized, session %s, %d actions",
            server.name,
            server.id,
            session.session_id,
            len(server.inventory),
        )
        if was != ServerStatus.ONLINE:
            await record(
                self.bus,
                "server.online",
                session.org_id,
                session.server_id,
                {"name": server.name, "agent_version": server.agent_version},
            )
        return server

    def _registry_frame(self, server: Server) -> Frame:
        return protocol.make_frame(
            "registry", registry_body(server, protocol.now_ms()), self.key.key
        )

    async def _gone(self, session: AgentSession) -> None:
        if session.online is not None:
            with contextlib.suppress(Exception):
                await session.online
        current = self.sessions.get(session.server_id)
        if current is not None and current is not session:
            return  # replaced by a newer connection: still online
        self.sessions.pop(session.server_id, None)
        if session.online is None or session.online.exception() is not None:
            return  # it never came online
        async with scoped(session.org_id):
            server = await Server.get_or_none(id=session.server_id)
            if server is None:
                return
            await Server.filter(id=server.id).update(status=ServerStatus.OFFLINE)
        log.info("agent %s disconnected", session.server_id)
        await record(
            self.bus,
            "server.offline",
            session.org_id,
            session.server_id,
            {"name": server.name, "reason": "disconnected"},
        )

    # -- frames from agents --------------------------------------------------------

    async def _handle(self, session: AgentSession, frame: Frame) -> None:
        if frame.type == "error":
            raise ProtocolError(str(frame.body["code"]), f"agent said: {frame.body['message']}")
        if frame.type not in {"heartbeat", "result", "event", "agent_key"}:
            raise ProtocolError("FRM005", f"agents do not send {frame.type} frames")
        frame.verify(session.public_key)
        if frame.body["server_id"] != str(session.server_id):
            raise ProtocolError("CMD002", "frame names another server")
        if frame.type == "heartbeat":
            self._heartbeat(session, frame.body)
        elif frame.type == "result":
            await self._result(session, frame)
        elif frame.type == "event":
            if frame.body["kind"] == "progress":  # lines of a running command's log
                listener = self._progress.get(str(frame.body["data"].get("command_id")))
                if listener is not None:
                    listener(frame.body["data"])
                return
            await record(
                self.bus,
                f"agent.{frame.body['kind']}",
                session.org_id,
                session.server_id,
                frame.body["data"],
            )
        else:
            await self._agent_key(session, frame.body)

    def _heartbeat(self, session: AgentSession, body: dict[str, Any]) -> None:
        if body["seq"] <= session.last_seq:
            log.warning("agent %s: stale heartbeat seq %s", session.server_id, body["seq"])
            return
        session.last_seq = body["seq"]
        self.bus.publish(
            LiveEvent("server.metrics", session.org_id, session.server_id, body["metrics"])
        )
        self._beats.append(
            _Beat(session.org_id, session.server_id, datetime.now(UTC), body["metrics"])
        )

    async def _result(self, session: AgentSession, frame: Frame) -> None:
        body = frame.body
        command_id = body["command_id"]
        if body["status"] == "refused" and body.get("code") in AGENT_SECURITY_REFUSALS:
            # The agent refused a command it was sent: a forged, replayed, stale or
            # misaddressed one, or an action its signed registry does not allow.
            await self.refusals.note(
                session.org_id,
                "agent.command_refused",
                str(body["code"]),
                actor=f"agent:{session.server_id}",
                source=remote_address(session.transport),
                target=f"server:{session.server_id}",
                reason=str(body.get("message") or ""),
                details={"command_id": str(command_id)[:64]},
            )
        waiter = self._waiters.get(command_id)
        if waiter is not None and command_id in session.pending:
            if not waiter.done():  # the issuing coroutine stores it, batched with its peers
                waiter.set_result(Reply(body, frame.sig, time.monotonic()))
            return
        try:
            uuid.UUID(command_id)
        except ValueError:
            log.warning(
                "agent %s refused an unreadable command: %s %s",
                session.server_id,
                body.get("code"),
                body.get("message"),
            )
            return
        async with scoped(session.org_id):  # a late result: nobody waits any more
            updated = await Command.filter(
                id=command_id,
                server_id=session.server_id,
                status__in=[CommandStatus.SENT, CommandStatus.TIMEOUT, CommandStatus.UNDELIVERED],
            ).update(**_result_fields(Reply(body, frame.sig, time.monotonic())))
        if not updated:
            log.warning(
                "agent %s reported a result for unknown command %s", session.server_id, command_id
            )
            await self.refusals.note(
                session.org_id,
                "agent.result_refused",
                "CMD404",
                actor=f"agent:{session.server_id}",
                source=remote_address(session.transport),
                target=f"server:{session.server_id}",
                reason="no such command is waiting",
                details={"command_id": command_id},
            )

    async def _agent_key(self, session: AgentSession, body: dict[str, Any]) -> None:
        if body["old_public_key"] != session.public_key:
            raise ProtocolError("KEY001", "old_public_key is not this agent's key")
        proof = {
            "server_id": body["server_id"],
            "new_public_key": body["new_public_key"],
            "issued_at": body["issued_at"],
        }
        try:
            protocol.verify(body["new_public_key"], "agent_key_proof", proof, body["proof"])
        except ProtocolError:
            raise ProtocolError(
                "KEY001", "the new key's proof of possession does not verify"
            ) from None
        if abs(protocol.now_ms() - body["issued_at"]) > protocol.CLOCK_SKEW_MS:
            raise ProtocolError("KEY001", "key rotation request is not fresh")
        async with scoped(session.org_id):
            await Server.filter(id=session.server_id).update(
                agent_public_key=body["new_public_key"]
            )
        session.public_key = body["new_public_key"]
        accepted = {
            "server_id": str(session.server_id),
            "public_key": body["new_public_key"],
            "issued_at": protocol.now_ms(),
        }
        await session.outbox.put(
            protocol.make_frame("agent_key_accepted", accepted, self.key.key).encode()
        )
        await record(
            self.bus,
            "agent.key_rotated",
            session.org_id,
            session.server_id,
            {"key_id": protocol.key_id(body["new_public_key"])},
        )

    # -- commands ------------------------------------------------------------------

    async def run(
        self,
        org_id: uuid.UUID,
        server: Server,
        action: str,
        kind: str,
        params: dict[str, Any],
        issued_by: str,
        timeout_s: float,
        on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> Command:
        """Send a signed command and wait for its signed result (or the timeout)."""
        if server.id not in self.sessions:
            raise AgentUnavailable(f"the agent of {server.name} is not connected")
        outcome = (
            await self.run_many(
                org_id, [server], action, kind, params, issued_by, timeout_s, on_progress
            )
        )[0]
        return outcome.command

    async def run_many(
        self,
        org_id: uuid.UUID,
        servers: list[Server],
        action: str,
        kind: str,
        params: dict[str, Any],
        issued_by: str,
        timeout_s: float,
        on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> list[Outcome]:
        """Fan a command out to several servers; results are stored in one transaction.

        `on_progress(command_id, data)` receives the progress lines the agent streams
        while the command runs.
        """
        key = self.key
        sent: list[tuple[Command, AgentSession | None, Frame | None]] = []
        for server in servers:
            session = self.sessions.get(server.id)
            frame = protocol.new_command(key.key, str(server.id), action, params)
            body = frame.body
            command = Command(
                id=uuid.UUID(body["id"]),
                organization_id=org_id,
                server_id=server.id,
                action=action,
                kind=kind,
                params=params,
                issued_by=issued_by,
                issued_at=body["issued_at"],
                expires_at=body["expires_at"],
                nonce=body["nonce"],
                signing_key_id=key.key_id,
                status=CommandStatus.SENT if session else CommandStatus.UNDELIVERED,
                message=None if session else "the agent is not connected",
            )
            sent.append((command, session, frame if session else None))
        async with scoped(org_id):
            await Command.bulk_create([command for command, _, _ in sent])

        loop = asyncio.get_running_loop()
        waiters: dict[str, asyncio.Future[Reply]] = {}
        started = time.monotonic()
        for command, session, signed in sent:
            if session is None or signed is None:
                continue
            command_id = str(command.id)
            if on_progress is not None:
                self._progress[command_id] = functools.partial(on_progress, command_id)
            future: asyncio.Future[Reply] = loop.create_future()
            self._waiters[command_id] = future
            session.pending.add(command_id)
            try:
                session.outbox.put_nowait(signed.encode())
            except asyncio.QueueFull:
                future.cancel()  # the agent is not keeping up: counted as undelivered
                continue
            waiters[command_id] = future
        try:
            if waiters:
                await asyncio.wait(waiters.values(), timeout=timeout_s)
        finally:
            for command, session, _ in sent:
                self._waiters.pop(str(command.id), None)
                self._progress.pop(str(command.id), None)
                if session is not None:
                    session.pending.discard(str(command.id))

        outcomes = []
        now = datetime.now(UTC)
        for command, session, _ in sent:
            answered = waiters.get(str(command.id))
            latency = None
            if answered is not None and answered.done() and not answered.cancelled():
                reply = answered.result()
                for name, value in _result_fields(reply, now).items():
                    setattr(command, name, value)
                latency = (reply.received - started) * 1000
            elif session is not None and (session.closed or answered is None):
                command.status = CommandStatus.UNDELIVERED
                command.message = "the agent disconnected before reporting a result"
            elif session is not None:
                command.status = CommandStatus.TIMEOUT
                command.message = f"no result within {timeout_s:.0f} s"
            outcomes.append(Outcome(command, latency))
        answered_commands = [o.command for o in outcomes if o.latency_ms is not None]
        unanswered = [
            o.command
            for o in outcomes
            if o.latency_ms is None
            and o.command.status in (CommandStatus.TIMEOUT, CommandStatus.UNDELIVERED)
        ]
        async with scoped(org_id):
            if answered_commands:  # one statement per batch instead of one per command
                await Command.bulk_update(answered_commands, fields=RESULT_FIELDS, batch_size=200)
            for command in unanswered:  # only if no late result landed meanwhile
                await Command.filter(id=command.id, status=CommandStatus.SENT).update(
                    status=command.status, message=command.message, finished_at=now
                )
        names = {server.id: server.name for server in servers}
        await audit.append(
            org_id,
            *[
                audit.Record(
                    actor=issued_by,
                    action="agent.command",
                    target=f"{names.get(o.command.server_id, o.command.server_id)}: {action}",
                    details={
                        "command_id": str(o.command.id),
                        "kind": kind,
                        "params": params,
                        "signing_key": key.key_id,
                    },
                    outcome=str(o.command.status)
                    if o.command.status == CommandStatus.OK
                    else (o.command.code or str(o.command.status)),
                )
                for o in outcomes
            ],
        )
        return outcomes

    async def push_registry(self, server: Server) -> None:
        """Send a new signed registry (after the security mode changed)."""
        session = self.sessions.get(server.id)
        if session is not None:
            await session.outbox.put(self._registry_frame(server).encode())

    # -- background loops ----------------------------------------------------------

    async def _flush(self) -> None:
        beats, self._beats = self._beats, []
        by_org: dict[uuid.UUID, list[_Beat]] = defaultdict(list)
        for beat in beats:
            by_org[beat.org_id].append(beat)
        for org_id, group in by_org.items():
            latest: dict[uuid.UUID, _Beat] = {b.server_id: b for b in group}
            async with scoped(org_id):
                await Heartbeat.bulk_create(
                    [
                        Heartbeat(
                            organization_id=org_id,
                            server_id=b.server_id,
                            at=b.at,
                            metrics=b.metrics,
                        )
                        for b in group
                    ]
                )
                # The server row (latest metrics, last seen) is refreshed at most every half
                # offline window: often enough for presence across instances, without one
                # UPDATE per heartbeat. Live figures reach dashboards through the event bus.
                every = self.interval_ms * self.settings.offline_after_missed / 2000
                now = time.monotonic()
                for server_id, beat in latest.items():
                    if now - self._persisted.get(server_id, 0.0) < every:
                        continue
                    self._persisted[server_id] = now
                    await Server.filter(id=server_id).update(
                        last_seen_at=beat.at, metrics=beat.metrics, status=ServerStatus.ONLINE
                    )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await self._flush()
            except Exception:
                log.exception("storing heartbeats failed")

    async def _presence_loop(self) -> None:
        """Close connections that stopped heartbeating; sweep the database now and then."""
        ticks = 0
        while True:
            await asyncio.sleep(1)
            limit = self.interval_ms * self.settings.offline_after_missed / 1000
            for session in list(self.sessions.values()):
                if time.monotonic() - session.last_heard > limit:
                    log.warning(
                        "agent %s missed %d heartbeats; closing",
                        session.server_id,
                        self.settings.offline_after_missed,
                    )
                    await self._close(session, protocol.CLOSE_POLICY, "missed heartbeats")
                    self._spawn(self._gone(session))
            ticks += 1
            if ticks % 30 == 0:
                try:
                    await self._sweep_database()
                except Exception:
                    log.exception("presence sweep failed")

    async def _sweep_database(self, startup: bool = False) -> None:
        """Mark offline the servers no instance has heard from (e.g. after a crash)."""
        cutoff = datetime.now(UTC) - timedelta(
            milliseconds=self.interval_ms * self.settings.offline_after_missed
        )
        for org in await Organization.all():
            async with scoped(org.id):
                stale = await Server.filter(
                    status=ServerStatus.ONLINE, last_seen_at__lt=cutoff
                ).exclude(id__in=list(self.sessions))
                for server in stale:
                    await Server.filter(id=server.id).update(status=ServerStatus.OFFLINE)
            for server in stale:
                await record(
                    self.bus,
                    "server.offline",
                    org.id,
                    server.id,
                    {"name": server.name, "reason": "no heartbeat"},
                )

    async def _key_loop(self) -> None:
        """Notice a rotation (made by `serverflow keys rotate`) and announce it to agents."""
        while True:
            await asyncio.sleep(1)
            try:
                latest = await signing.current_public_key()
                if latest is None or latest == self.key.public_key:
                    continue
                old = self.key.public_key
                chain = await signing.chain_from(old) or []
                self._key = await signing.current_key(self.cipher)
                log.info(
                    "signing key rotated to %s; announcing to %d agents",
                    self._key.key_id,
                    len(self.sessions),
                )
                for session in list(self.sessions.values()):
                    for frame in chain:
                        await session.outbox.put(frame.encode())
            except Exception:
                log.exception("key rotation check failed")

    async def _prune_loop(self) -> None:
        """Keep a bounded heartbeat history per server."""
        keep = self.settings.heartbeat_history
        while True:
            await asyncio.sleep(60)
            try:
                for org in await Organization.all():
                    async with scoped(org.id):
                        for server in await Server.all().only("id"):
                            ids = (
                                await Heartbeat.filter(server_id=server.id)
                                .order_by("-id")
                                .offset(keep)
                                .limit(1)
                                .values_list("id", flat=True)
                            )
                            if ids:
                                await Heartbeat.filter(server_id=server.id, id__lte=ids[0]).delete()
            except Exception:
                log.exception("pruning heartbeats failed")
