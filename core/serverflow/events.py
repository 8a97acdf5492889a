"""Lifecycle events: stored per organisation, handed to plugins, and pushed to listeners.

`EventBus` is the in-process bus of a single instance; with a Redis URL set, the control
plane uses `bus_redis.RedisBus` instead, which has the same interface.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serverflow.models import Event
from serverflow.tenancy import scoped

log = logging.getLogger(__name__)


# Kinds of which only the latest per server matters (a gauge, not a happening): between
# instances they may be coalesced (serverflow.bus_redis).
COALESCED_KINDS = frozenset({"server.metrics"})


@dataclass(frozen=True)
class LiveEvent:
    """What listeners (plugins, dashboards) receive."""

    kind: str
    organization_id: uuid.UUID
    server_id: uuid.UUID | None = None
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The id of the control-plane instance that published it (set by the bus).
    origin: str = ""


def event_to_json(event: LiveEvent) -> bytes:
    """The event as it crosses between instances (values JSON cannot hold become strings)."""
    return json.dumps(
        {
            "kind": event.kind,
            "organization_id": str(event.organization_id),
            "server_id": str(event.server_id) if event.server_id else None,
            "data": event.data,
            "at": event.at.isoformat(),
            "origin": event.origin,
        },
        default=str,
        separators=(",", ":"),
    ).encode()


def events_to_json(events: list[LiveEvent]) -> bytes:
    """Several events in one message (`{"bundle": [event, ...]}`)."""
    return b'{"bundle":[' + b",".join(event_to_json(e) for e in events) + b"]}"


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a serialised event: {exc}") from exc


def events_from_json(raw: bytes | str) -> list[LiveEvent]:
    """The events of one message, an event or a bundle; ValueError for anything else."""
    body = _loads(raw)
    if isinstance(body, dict) and isinstance(body.get("bundle"), list):
        return [_event_from(item) for item in body["bundle"]]
    return [_event_from(body)]


def event_from_json(raw: bytes | str) -> LiveEvent:
    """The inverse of `event_to_json`; ValueError for anything else."""
    return _event_from(_loads(raw))


def _event_from(body: Any) -> LiveEvent:
    try:
        server_id = body["server_id"]
        data = body["data"]
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
        return LiveEvent(
            kind=str(body["kind"]),
            organization_id=uuid.UUID(body["organization_id"]),
            server_id=uuid.UUID(server_id) if server_id else None,
            data=data,
            at=datetime.fromisoformat(body["at"]),
            origin=str(body["origin"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a serialised event: {exc}") from exc


DROP_LOG_S = 10.0


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[LiveEvent]
    local_only: bool
    dropped: int = 0
    warned_at: float = -DROP_LOG_S


class EventBus:
    """In-process fan-out of events to subscribers (one queue each, bounded)."""

    def __init__(self, origin: str = "") -> None:
        self.origin = origin
        self._subscribers: set[_Subscriber] = set()
        # Called with each event that came from another instance (for /metrics' bus lag).
        self.on_remote: Callable[[LiveEvent], None] | None = None

    def publish(self, event: LiveEvent) -> None:
        """Hand the event to every subscriber of this instance (never blocks)."""
        if event.origin != self.origin:
            event = dataclasses.replace(event, origin=self.origin)
        self.deliver(event)

    def deliver(self, event: LiveEvent) -> None:
        remote = event.origin != self.origin
        if remote and self.on_remote is not None:
            self.on_remote(event)
        for subscriber in list(self._subscribers):
            if remote and subscriber.local_only:
                continue
            try:
                subscriber.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._dropped(subscriber, event)

    def _dropped(self, subscriber: _Subscriber, event: LiveEvent) -> None:
        """Count a dropped event; one warning per subscriber every DROP_LOG_S at most (a
        line per drop, thousands a second under load, would cost more than the events)."""
        subscriber.dropped += 1
        now = time.monotonic()
        if now - subscriber.warned_at < DROP_LOG_S:
            return
        log.warning(
            "event subscriber too slow: dropped %d events (the last %s)",
            subscriber.dropped,
            event.kind,
        )
        subscriber.dropped, subscriber.warned_at = 0, now

    @asynccontextmanager
    async def subscribe(
        self, maxsize: int = 1000, *, local_only: bool = False
    ) -> AsyncIterator[asyncio.Queue[LiveEvent]]:
        """A queue of every event; `local_only`: only those published on this instance."""
        subscriber = _Subscriber(asyncio.Queue(maxsize), local_only)
        self._subscribers.add(subscriber)
        try:
            yield subscriber.queue
        finally:
            self._subscribers.discard(subscriber)

    @property
    def description(self) -> str:
        return "in-process"

    async def start(self) -> None:
        """Nothing to connect to: the in-process bus works from the start."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def problem(self) -> str | None:
        """Why the bus cannot share events now (for /readyz), or None."""
        return None


async def record(
    bus: EventBus,
    kind: str,
    org_id: uuid.UUID,
    server_id: uuid.UUID | None = None,
    data: dict[str, Any] | None = None,
    store: bool = True,
) -> LiveEvent:
    """Store an event in its organisation's timeline and publish it."""
    event = LiveEvent(kind=kind, organization_id=org_id, server_id=server_id, data=data or {})
    if store:
        async with scoped(org_id):
            await Event.create(kind=kind, server_id=server_id, data=event.data)
    bus.publish(event)
    return event
