"""Lifecycle events: stored per organisation, handed to plugins, and pushed to listeners."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serverflow.models import Event
from serverflow.tenancy import scoped

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveEvent:
    """What listeners (plugins, dashboards) receive."""

    kind: str
    organization_id: uuid.UUID
    server_id: uuid.UUID | None = None
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class EventBus:
    """In-process fan-out of events to subscribers (one queue each, bounded)."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[LiveEvent]] = set()

    def publish(self, event: LiveEvent) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("event subscriber too slow; dropping %s", event.kind)

    @asynccontextmanager
    async def subscribe(self, maxsize: int = 1000) -> AsyncIterator[asyncio.Queue[LiveEvent]]:
        queue: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


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
