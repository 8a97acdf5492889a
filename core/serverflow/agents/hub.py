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
from serverflow.agents.routing import REFRESH_EVERY_S, Router, RouterUnavailable
from serverflow.errors import AgentUnavailable
from serverflow.events import EventBus, LiveEvent, record
from serverflow.keys import Cipher
from serverflow.metrics import Metrics
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
ADMIT_WAIT_S = 3.0  # for a handshake slot, within the agent's own 10 s for the handshake
DEFER_LOG_S = 10.0
# How long a command routed to an instance that died may still wait for its result (the
# agent reconnects to another instance and reports it from its outbox) before it ends as
# "agent reconnecting".
RECONNECT_GRACE_S = 10.0
RECONNECTING = "AGT002"


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
class _Routed:
    """A command this instance signed for an agent another instance holds."""

    server_id: uuid.UUID
    public_key: str
    owner: str
    subscriptions: int  # the router's count when it was sent: changed, a reply may be lost
    dead_since: float | None = None


@dataclass
class _Relay:
    """A command another instance signed, sent through this one's socket to its agent."""

    reply_to: str
    session: AgentSession


class _Lost(Exception):
    """A routed command that will get no result through its route."""

    def __init__(self, message: str, delivered: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.delivered = delivered
        self.code = code


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
        router: Router | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.cipher = cipher
        self.bus = bus
        self.refusals = refusals or RefusalLog()
        self.router = router or Router()
        self.metrics = metrics
        self.router.attach(self._routed_message)
        self.sessions: dict[uuid.UUID, AgentSession] = {}
        self._waiters: dict[str, asyncio.Future[Reply]] = {}
        self._routed: dict[str, _Routed] = {}  # command id -> where it went
        self._relays: dict[str, _Relay] = {}  # command id -> who waits for it
        self._progress: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._beats: list[_Beat] = []
        self._slots = asyncio.Semaphore(settings.agent_handshakes_max)  # handshakes at once
        self._deferred, self._deferred_logged = 0, -DEFER_LOG_S
        self._persisted: dict[uuid.UUID, float] = {}  # server id -> when its row was updated
        self._heard: set[uuid.UUID] = set()  # servers with heartbeats stored since the last prune
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
        await self.router.start()
        await self._sweep_database(startup=True)
        loops = [self._flush_loop, self._presence_loop, self._key_loop, self._prune_loop]
        if self.router.shared:
            loops.append(self._route_loop)
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=loop.__name__))

    def connected(self, server: Server) -> bool:
        """Whether `server`'s agent can be sent a command from this instance now: its
        socket is here, or (several instances) another instance holds it."""
        if server.id in self.sessions:
            return True
        return self.router.shared and server.status == ServerStatus.ONLINE

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
        await self.router.stop()

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
        # A slot until the rows the handshake updates are written (online), even if the
        # agent goes away meanwhile: that is the work AGENT_HANDSHAKES_MAX bounds. Waiting
        # for one costs an idle socket; past ADMIT_WAIT_S the agent is told to retry.
        try:
            await asyncio.wait_for(self._slots.acquire(), ADMIT_WAIT_S)
        except TimeoutError:
            await self._defer(transport)
            return
        held = [True]

        def handshake_done(_: object = None) -> None:
            if held:
                held.clear()
                self._slots.release()

        claim = _Claim()
        try:
            hello, auth = await asyncio.wait_for(
                self._handshake(transport, claim), HANDSHAKE_TIMEOUT
            )
        except TimeoutError:
            handshake_done()
            await self._refuse(transport, ProtocolError("AUT004"), claim)
            return
        except ProtocolError as exc:
            handshake_done()
            await self._refuse(transport, exc, claim)
            return
        except BaseException:
            handshake_done()
            raise
        session = AgentSession(
            server_id=uuid.UUID(hello["server_id"]),
            org_id=uuid.UUID(hello["org_id"]),
            session_id=auth["session_id"],
            public_key=hello["public_key"],
            transport=transport,
        )
        session.online = asyncio.create_task(self._come_online(session, hello, auth))
        session.online.add_done_callback(handshake_done)
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
                relay = self._relays.pop(command_id, None)
                if relay is not None:
                    self.router.tell(
                        relay.reply_to,
                        {
                            "t": "lost",
                            "id": command_id,
                            "delivered": True,
                            "message": "the agent disconnected before reporting a result",
                        },
                    )
            self._spawn(self._gone(session))

    async def _defer(self, transport: Transport) -> None:
        """No handshake slot within ADMIT_WAIT_S: retry later (AUT006). Not a refusal of
        the agent, so not audited; counted, and logged once per DEFER_LOG_S at most."""
        self._deferred += 1
        if self.metrics is not None:
            self.metrics.handshakes_deferred.inc()
        now = time.monotonic()
        if now - self._deferred_logged >= DEFER_LOG_S:
            log.warning(
                "%d agent connection(s) told to retry later: no handshake slot within %g s "
                "(SERVERFLOW_AGENT_HANDSHAKES_MAX=%d at once)",
                self._deferred,
                ADMIT_WAIT_S,
                self.settings.agent_handshakes_max,
                extra={"code": "AUT006"},
            )
            self._deferred, self._deferred_logged = 0, now
        busy = ProtocolError("AUT006")
        try:
            await transport.send(protocol.error_frame(busy.code, busy.message).encode())
            await transport.close(protocol.close_code(busy.code), busy.code)
        except Exception:
            log.debug("could not send the error frame", exc_info=True)

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
        # Claimed before the row says online: an instance the agent just left then sees
        # that another holds it and does not mark it offline.
        await self.router.claim(session.server_id, session.session_id)
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
        if not await self.router.release(session.server_id, session.session_id):
            log.info("agent %s reconnected to another instance", session.server_id)
            return  # online there
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
                command_id = str(frame.body["data"].get("command_id"))
                listener = self._progress.get(command_id)
                if listener is not None:
                    listener(frame.body["data"])
                relay = self._relays.get(command_id)
                if relay is not None and relay.session is session:
                    self.router.tell(
                        relay.reply_to,
                        {"t": "progress", "id": command_id, "data": frame.body["data"]},
                    )
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
        routed = self._routed.get(command_id)
        if waiter is not None and (
            command_id in session.pending
            # sent through another instance, reported here after a reconnect
            or (routed is not None and routed.server_id == session.server_id)
        ):
            if not waiter.done():  # the issuing coroutine stores it, batched with its peers
                waiter.set_result(Reply(body, frame.sig, time.monotonic()))
            return
        relay = self._relays.get(command_id)
        if relay is not None and relay.session is session:
            del self._relays[command_id]
            session.pending.discard(command_id)
            self._spawn(self._reply_relayed(session, relay.reply_to, command_id, body, frame.sig))
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
        updated = await self._store_late(session, command_id, body, frame.sig)
        if updated and self.router.shared:
            # Whichever instance still waits for it (it sent the command through an
            # instance that died, and the agent reported it here after reconnecting).
            self.router.tell_all({"t": "reply", "id": command_id, "body": body, "sig": frame.sig})
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

    async def _store_late(
        self, session: AgentSession, command_id: str, body: dict[str, Any], sig: str | None
    ) -> int:
        """Store a result nobody here waits for; how many commands it answered (0 or 1)."""
        async with scoped(session.org_id):
            return await Command.filter(
                id=command_id,
                server_id=session.server_id,
                status__in=[CommandStatus.SENT, CommandStatus.TIMEOUT, CommandStatus.UNDELIVERED],
            ).update(**_result_fields(Reply(body, sig, time.monotonic())))

    async def _reply_relayed(
        self,
        session: AgentSession,
        reply_to: str,
        command_id: str,
        body: dict[str, Any],
        sig: str | None,
    ) -> None:
        """Hand a relayed command's result back to the instance that sent it; stored here
        if that instance is not listening (Redis away from it for a moment, or it died),
        where it looks when it can listen again."""
        message = {"t": "reply", "id": command_id, "body": body, "sig": sig}
        if not await self.router.send(reply_to, message):
            await self._store_late(session, command_id, body, sig)

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
        if not self.connected(server):
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
        routes, unrouted = await self._routes(servers)
        sent: list[tuple[Command, AgentSession | None, str | None, Frame | None]] = []
        for server in servers:
            session = self.sessions.get(server.id)
            owner = routes.get(server.id)
            frame = protocol.new_command(key.key, str(server.id), action, params)
            body = frame.body
            reachable = session is not None or owner is not None
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
                status=CommandStatus.SENT if reachable else CommandStatus.UNDELIVERED,
                message=None if reachable else unrouted,
            )
            sent.append((command, session, owner, frame if reachable else None))
        async with scoped(org_id):
            await Command.bulk_create([command for command, _, _, _ in sent])

        loop = asyncio.get_running_loop()
        waiters: dict[str, asyncio.Future[Reply]] = {}
        by_owner: dict[str, list[list[str]]] = defaultdict(list)
        publics = {server.id: server.agent_public_key or "" for server in servers}
        started = time.monotonic()
        for command, session, owner, signed in sent:
            if signed is None:
                continue
            command_id = str(command.id)
            if on_progress is not None:
                self._progress[command_id] = functools.partial(on_progress, command_id)
            future: asyncio.Future[Reply] = loop.create_future()
            self._waiters[command_id] = future
            waiters[command_id] = future
            if owner is not None:
                self._routed[command_id] = _Routed(
                    command.server_id, publics[command.server_id], owner, self.router.subscriptions
                )
                by_owner[owner].append([str(command.server_id), command_id, signed.encode()])
                continue
            assert session is not None
            session.pending.add(command_id)
            try:
                session.outbox.put_nowait(signed.encode())
            except asyncio.QueueFull:
                future.cancel()  # the agent is not keeping up: counted as undelivered
                del waiters[command_id]
        try:
            if by_owner:
                await asyncio.gather(*(self._send_routed(o, i) for o, i in by_owner.items()))
            await self._wait(org_id, waiters, started + timeout_s)
        finally:
            for command, session, _, _ in sent:
                self._waiters.pop(str(command.id), None)
                self._progress.pop(str(command.id), None)
                self._routed.pop(str(command.id), None)
                if session is not None:
                    session.pending.discard(str(command.id))

        outcomes = []
        now = datetime.now(UTC)
        for command, session, owner, _ in sent:
            answered = waiters.get(str(command.id))
            latency = None
            lost = (
                answered.exception()
                if answered is not None and answered.done() and not answered.cancelled()
                else None
            )
            if answered is not None and answered.done() and not answered.cancelled() and not lost:
                reply = answered.result()
                for name, value in _result_fields(reply, now).items():
                    setattr(command, name, value)
                latency = (reply.received - started) * 1000
            elif isinstance(lost, _Lost):
                command.status = CommandStatus.UNDELIVERED
                command.code = lost.code
                command.message = lost.message
            elif session is not None and (session.closed or answered is None):
                command.status = CommandStatus.UNDELIVERED
                command.message = "the agent disconnected before reporting a result"
            elif session is not None or owner is not None:
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
                    status=command.status,
                    code=command.code,
                    message=command.message,
                    finished_at=now,
                )
        if self.metrics is not None:
            for outcome in outcomes:
                self.metrics.commands.labels(str(outcome.command.status)).inc()
                if outcome.latency_ms is not None:
                    self.metrics.latency.observe(outcome.latency_ms / 1000)
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
            return
        if self.router.shared:
            routes, _ = await self._routes([server])
            if server.id in routes:
                message = {"t": "registry", "org_id": str(server.organization_id)}
                self.router.tell(routes[server.id], {**message, "server_id": str(server.id)})

    # -- routing between instances -------------------------------------------------

    async def _routes(self, servers: list[Server]) -> tuple[dict[uuid.UUID, str], str]:
        """The instance holding each agent not connected here, and why the others are
        unreachable."""
        elsewhere = [s.id for s in servers if s.id not in self.sessions]
        if not elsewhere or not self.router.shared:
            return {}, "the agent is not connected"
        try:
            return await self.router.owners(elsewhere), "the agent is not connected"
        except RouterUnavailable as exc:
            return {}, (
                "the agent is not connected to this control-plane instance, and Redis, "
                f"through which the other instances are reached, is unreachable ({exc})"
            )

    async def _send_routed(self, owner: str, items: list[list[str]]) -> None:
        message = {"t": "cmd", "reply_to": self.router.instance_id, "items": items}
        if await self.router.send(owner, message):
            return
        for _, command_id, _ in items:  # nobody listens there: that instance is gone
            self._lose(
                command_id,
                _Lost(
                    "agent reconnecting: the control-plane instance holding its connection "
                    "is not answering; the command was not sent, nothing ran",
                    delivered=False,
                    code=RECONNECTING,
                ),
            )

    def _lose(self, command_id: str, why: _Lost) -> None:
        waiter = self._waiters.get(command_id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(why)

    async def _wait(
        self, org_id: uuid.UUID, waiters: dict[str, asyncio.Future[Reply]], deadline: float
    ) -> None:
        """Until every command is answered or the deadline; a command routed through an
        instance that died gets RECONNECT_GRACE_S more for its result to come back by
        another way, then ends as "agent reconnecting". A result relayed back while this
        instance was not subscribed is stored by the relaying instance: looked up there."""
        pending = {f for f in waiters.values() if not f.done()}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            routed = [i for i, f in waiters.items() if f in pending and i in self._routed]
            _, pending = await asyncio.wait(
                pending, timeout=min(remaining, 1.0) if routed else remaining
            )
            if not routed or not pending:
                continue
            missed = [
                i
                for i in routed
                if self._routed[i].subscriptions != self.router.subscriptions
                and not waiters[i].done()
            ]
            if missed:
                await self._stored_replies(org_id, missed)
            alive = await self.router.alive(self._routed[i].owner for i in routed)
            now = time.monotonic()
            for command_id in routed:
                route = self._routed[command_id]
                if route.owner in alive:
                    route.dead_since = None
                    continue
                route.dead_since = route.dead_since or now
                if now - route.dead_since >= RECONNECT_GRACE_S:
                    self._lose(
                        command_id,
                        _Lost(
                            "agent reconnecting: the control-plane instance holding its "
                            "connection stopped before the result came back; the result is "
                            "stored when the agent reports it",
                            delivered=True,
                            code=RECONNECTING,
                        ),
                    )

    async def _stored_replies(self, org_id: uuid.UUID, command_ids: list[str]) -> None:
        async with scoped(org_id):
            rows = await Command.filter(
                id__in=command_ids, result_signature__isnull=False
            ).values_list("id", "result_body", "result_signature")
        for command_id, body, sig in rows:
            route = self._routed.get(str(command_id))
            waiter = self._waiters.get(str(command_id))
            if route is None or waiter is None or waiter.done():
                continue
            try:
                protocol.verify(route.public_key, "result", body, sig)
            except ProtocolError:
                log.warning("a stored result for %s does not verify; ignored", command_id)
                continue
            waiter.set_result(Reply(body, sig, time.monotonic()))

    def _routed_message(self, message: dict[str, Any]) -> None:
        """What another instance sent this one (called by the router's listener)."""
        kind = message["t"]
        if kind == "cmd":
            for server_id, command_id, frame in message["items"]:
                self._relay(str(message["reply_to"]), uuid.UUID(server_id), command_id, frame)
        elif kind == "reply":
            command_id = str(message["id"])
            route = self._routed.get(command_id)
            waiter = self._waiters.get(command_id)
            if route is None or waiter is None or waiter.done():
                return  # not ours, or answered already
            try:
                protocol.verify(route.public_key, "result", message["body"], message["sig"])
            except ProtocolError:
                log.warning("a relayed result for %s does not verify; ignored", command_id)
                return
            waiter.set_result(Reply(message["body"], message["sig"], time.monotonic()))
        elif kind == "progress":
            listener = self._progress.get(str(message["id"]))
            if listener is not None and str(message["id"]) in self._routed:
                listener(message["data"])
        elif kind == "lost":
            self._lose(
                str(message["id"]),
                _Lost(str(message["message"]), delivered=bool(message["delivered"])),
            )
        elif kind == "registry":
            self._spawn(
                self._push_registry_of(
                    uuid.UUID(message["org_id"]), uuid.UUID(message["server_id"])
                )
            )

    def _relay(self, reply_to: str, server_id: uuid.UUID, command_id: str, frame: str) -> None:
        session = self.sessions.get(server_id)
        if session is None or session.closed:
            self.router.tell(
                reply_to,
                {
                    "t": "lost",
                    "id": command_id,
                    "delivered": False,
                    "message": "the agent moved to another control-plane instance before "
                    "the command reached it; nothing ran",
                },
            )
            return
        try:
            session.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            message = "the agent is not keeping up; the command was not sent"
            self.router.tell(
                reply_to, {"t": "lost", "id": command_id, "delivered": False, "message": message}
            )
            return
        self._relays[command_id] = _Relay(reply_to, session)
        session.pending.add(command_id)
        if self.metrics is not None:
            self.metrics.relayed.inc()

    async def _push_registry_of(self, org_id: uuid.UUID, server_id: uuid.UUID) -> None:
        async with scoped(org_id):
            server = await Server.get_or_none(id=server_id)
        if server is not None and server_id in self.sessions:
            await self.push_registry(server)

    async def _route_loop(self) -> None:
        """Say this instance is alive; renew the routes to its agents; close a session
        whose agent another instance now holds (a newer connection there)."""
        renewed = 0.0
        while True:
            try:
                await self.router.beat()
                if time.monotonic() - renewed >= REFRESH_EVERY_S:
                    renewed = time.monotonic()
                    held = {sid: s.session_id for sid, s in self.sessions.items() if not s.closed}
                    for server_id in await self.router.refresh(held):
                        session = self.sessions.get(server_id)
                        if session is not None and session.session_id == held[server_id]:
                            await self._close(
                                session, protocol.CLOSE_POLICY, "replaced by a newer connection"
                            )
            except Exception:
                log.exception("renewing agent routes failed")
            await asyncio.sleep(1)

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
                # One statement per batch of rows, not one per server (10,000 agents).
                every = self.interval_ms * self.settings.offline_after_missed / 2000
                now = time.monotonic()
                due = []
                for server_id, beat in latest.items():
                    self._heard.add(server_id)
                    if now - self._persisted.get(server_id, 0.0) < every:
                        continue
                    self._persisted[server_id] = now
                    due.append(
                        Server(
                            id=server_id,
                            organization_id=org_id,
                            last_seen_at=beat.at,
                            metrics=beat.metrics,
                            status=ServerStatus.ONLINE,
                        )
                    )
                if due:
                    await Server.bulk_update(
                        due, fields=["last_seen_at", "metrics", "status"], batch_size=500
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
            # Only the servers whose heartbeats this instance stored since the last round:
            # the others have nothing new to prune here (another instance holds them).
            heard, self._heard = self._heard, set()
            try:
                chunks = [list(heard)[i : i + 500] for i in range(0, len(heard), 500)]
                for org, chunk in [(o, c) for o in await Organization.all() for c in chunks]:
                    async with scoped(org.id):
                        for server in await Server.filter(id__in=chunk).only("id"):
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
