"""The event bus between control-plane instances: Redis pub/sub, used when a Redis URL is set.

Pub/sub, not streams: live events are a view of what is already stored (the event
timeline, deployment logs and heartbeats are in the database; a page that missed some
reloads them from there), so at-most-once delivery is right for them. Pub/sub costs one
PUBLISH per event, keeps nothing in Redis (no trimming, no consumer groups, no
acknowledgements) and hands a subscriber the present rather than a replay of minutes-old
metrics after it comes back. What must not be lost nor run twice, the commands routed to
the instance that holds an agent's socket, needs more than this and will get its own
design.

Every instance subscribes to one channel. `publish` stays synchronous: it hands the event
to this instance's subscribers at once (so they keep working while Redis is away) and
queues it for the one publisher task; the listener hands other instances' events to the
local subscribers and skips this instance's own, which they already have. So each
subscriber sees each event once.

When Redis goes away both tasks reconnect with jittered exponential backoff; the outage
is logged once when it starts and once when it ends. An event not sent within
`max_delay_s` is dropped (and counted): it is stored, and a late live event misleads more
than a missing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from serverflow.events import (
    COALESCED_KINDS,
    EventBus,
    LiveEvent,
    event_to_json,
    events_from_json,
    events_to_json,
)
from serverflow.settings import mask_url

log = logging.getLogger(__name__)

OUTBOX_SIZE = 10_000  # events waiting for the publisher; beyond it they stay local
BATCH = 500  # events per pipelined round trip
MAX_DELAY_S = 5.0
BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 5.0
PING_TIMEOUT_S = 1.0
IDLE_PING_S = 5.0  # a silent subscription is pinged, so a dead connection is noticed
# Other instances get the COALESCED_KINDS in bundles every COALESCE_S, a server's newest
# only. 10,000 agents beat 2,000 times a second; one message per beat, decoded by every
# instance, was most of an idle instance's work.
COALESCE_S = 1.0

# Errors that mean "Redis is not reachable now" (asyncio's TimeoutError is an OSError).
UNREACHABLE = (RedisError, OSError)


class Backoff:
    """Exponential delays with jitter (half fixed, half random), capped."""

    def __init__(self, start: float = BACKOFF_START_S, cap: float = BACKOFF_CAP_S) -> None:
        self.start = start
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.start * 2**self.attempt)
        self.attempt += 1
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self.attempt = 0


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def connect(
    url: str, name: str, *, connect_timeout: float = 2, timeout: float = 5
) -> tuple[aioredis.Redis, str]:
    """A client for `url` and the prefix of ServerFlow's keys and channels in it.

    No retries inside the client: its users notice a failure at once and reconnect with
    their own backoff (or fall back). Pub/sub channels ignore database numbers, so the
    number joins every name (`serverflow:<db>:`): deployments sharing one Redis on
    different databases stay apart.
    """
    client = aioredis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        client_name=name,
    )
    database = client.connection_pool.connection_kwargs.get("db", 0)
    return client, f"serverflow:{database}:"


class RedisBus(EventBus):
    """`EventBus` whose events also reach every other instance subscribed to the channel."""

    def __init__(self, url: str, origin: str, *, max_delay_s: float = MAX_DELAY_S) -> None:
        super().__init__(origin)
        self.url = url
        self.max_delay_s = max_delay_s
        self._client: aioredis.Redis | None = None
        self.channel = "serverflow:events"
        # An event, or an already encoded bundle of coalesced ones.
        self._outbox: asyncio.Queue[tuple[float, LiveEvent | bytes]] = asyncio.Queue(OUTBOX_SIZE)
        self._latest: dict[tuple[str, Any], LiveEvent] = {}  # coalesced, not yet queued
        self._tasks: list[asyncio.Task[None]] = []
        # The links that do not work now, with why; the bus is up when it is empty.
        self._broken = {"publish": "not connected yet", "subscribe": "not connected yet"}
        self._outage_since: float | None = None  # set once the outage has been logged
        self._unshared = 0  # events other instances did not get during this outage

    @property
    def description(self) -> str:
        return f"Redis {mask_url(self.url)}"

    async def start(self) -> None:
        self._client, prefix = connect(self.url, f"serverflow-{self.origin}")
        self.channel = f"{prefix}events"
        self._tasks = [
            asyncio.create_task(self._publisher(), name="bus-publisher"),
            asyncio.create_task(self._listener(), name="bus-listener"),
            asyncio.create_task(self._coalescer(), name="bus-coalescer"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._tasks and not self._broken:
            with contextlib.suppress(TimeoutError):  # the last events of a shutdown
                await asyncio.wait_for(self._outbox.join(), 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(*UNREACHABLE):
                await self._client.aclose()
            self._client = None

    def publish(self, event: LiveEvent) -> None:
        if event.origin != self.origin:
            event = dataclasses.replace(event, origin=self.origin)
        self.deliver(event)
        if event.kind in COALESCED_KINDS:
            self._latest[(event.kind, event.server_id)] = event
            return
        self._queue(event)

    def _queue(self, item: LiveEvent | bytes) -> None:
        try:
            self._outbox.put_nowait((time.monotonic(), item))
        except asyncio.QueueFull:
            self._unshared += 1

    async def _coalescer(self) -> None:
        """Every COALESCE_S, the newest coalesced event per server, in bundles of BATCH."""
        while True:
            await asyncio.sleep(COALESCE_S)
            latest, self._latest = list(self._latest.values()), {}
            for start in range(0, len(latest), BATCH):
                chunk = latest[start : start + BATCH]
                try:
                    self._queue(events_to_json(chunk))
                except (TypeError, ValueError) as exc:
                    log.warning("%d events cannot be sent to other instances: %s", len(chunk), exc)

    async def problem(self) -> str | None:
        if self._client is None:
            return "the event bus is not started"
        if self._broken:
            return "; ".join(sorted(set(self._broken.values())))
        try:
            await asyncio.wait_for(self._client.ping(), PING_TIMEOUT_S)
        except TimeoutError:
            return f"Redis did not answer a PING within {PING_TIMEOUT_S:g} s"
        except UNREACHABLE as exc:
            return _reason(exc)
        return None

    # -- the two tasks -------------------------------------------------------------

    async def _publisher(self) -> None:
        assert self._client is not None
        backoff = Backoff()
        batch: list[tuple[float, bytes]] = []  # (queued at, the event as JSON)
        while True:
            if not batch and "publish" not in self._broken:
                self._take(batch, await self._outbox.get())
            while len(batch) < BATCH and not self._outbox.empty():
                self._take(batch, self._outbox.get_nowait())
            batch = self._fresh(batch)
            try:
                if batch:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for _, payload in batch:
                            pipe.publish(self.channel, payload)
                        await pipe.execute()
                else:  # down, nothing to send: see whether Redis is back
                    await self._client.ping()
            except UNREACHABLE as exc:
                self._link_down("publish", exc)
                await asyncio.sleep(backoff.next())
                continue
            self._done(len(batch))
            batch = []
            backoff.reset()
            self._link_up("publish")

    def _take(
        self, batch: list[tuple[float, bytes]], item: tuple[float, LiveEvent | bytes]
    ) -> None:
        queued, event = item
        if isinstance(event, bytes):
            batch.append((queued, event))
            return
        try:
            batch.append((queued, event_to_json(event)))
        except (TypeError, ValueError) as exc:  # e.g. a circular structure in its data
            log.warning("event %s cannot be sent to other instances: %s", event.kind, exc)
            self._done(1)

    def _fresh(self, batch: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
        oldest = time.monotonic() - self.max_delay_s
        fresh = [item for item in batch if item[0] >= oldest]
        if len(fresh) < len(batch):
            self._unshared += len(batch) - len(fresh)
            self._done(len(batch) - len(fresh))
        return fresh

    def _done(self, count: int) -> None:
        for _ in range(count):
            self._outbox.task_done()

    async def _listener(self) -> None:
        assert self._client is not None
        await subscribe_forever(
            self._client,
            [self.channel],
            self._received,
            on_up=lambda: self._link_up("subscribe"),
            on_down=lambda exc: self._link_down("subscribe", exc),
        )

    def _received(self, raw: bytes) -> None:
        try:
            events = events_from_json(raw)
        except ValueError as exc:
            log.warning("ignoring a malformed message on %s: %s", self.channel, exc)
            return
        for event in events:
            if event.origin != self.origin:  # our own were delivered when published
                self.deliver(event)

    # -- one log line when an outage starts, one when it ends ----------------------

    def _link_down(self, link: str, exc: BaseException) -> None:
        self._broken[link] = _reason(exc)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "event bus: Redis at %s is unreachable (%s); live events reach only this "
                "instance's pages until it is back",
                mask_url(self.url),
                _reason(exc),
            )

    def _link_up(self, link: str) -> None:
        if self._broken.pop(link, None) is None or self._broken:
            return
        if self._outage_since is None:
            log.info("event bus: connected to Redis at %s", mask_url(self.url))
            return
        log.info(
            "event bus: Redis at %s is reachable again after %.1f s; %d live events were "
            "not shared with other instances meanwhile",
            mask_url(self.url),
            time.monotonic() - self._outage_since,
            self._unshared,
        )
        self._outage_since = None
        self._unshared = 0


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("event bus task %s stopped", task.get_name(), exc_info=task.exception())


async def subscribe_forever(
    client: Any,
    channels: list[str],
    on_message: Callable[[bytes], None],
    on_up: Callable[[], None] | None = None,
    on_down: Callable[[BaseException], None] | None = None,
) -> None:
    """Hand every message published on `channels` to `on_message`, until cancelled.

    Subscribes again, with backoff, whenever the connection is lost, including one that
    died without closing (a cut network says nothing: no answer to a PING is the sign).
    """
    backoff = Backoff()
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*channels)
            backoff.reset()
            if on_up is not None:
                on_up()
            heard = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=IDLE_PING_S)
                if message is not None:
                    heard = time.monotonic()
                    if message["type"] == "message":
                        on_message(message["data"])
                elif time.monotonic() - heard > 2 * IDLE_PING_S:
                    raise RedisConnectionError(f"no answer from Redis for {2 * IDLE_PING_S:g} s")
                else:
                    await pubsub.ping()
        except UNREACHABLE as exc:
            if on_down is not None:
                on_down(exc)
        finally:
            with contextlib.suppress(*UNREACHABLE):
                await pubsub.aclose()
        await asyncio.sleep(backoff.next())
