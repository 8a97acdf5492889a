"""Which control-plane instance holds an agent's WebSocket, and the way to reach it.

An agent's connection lands on any instance behind the load balancer; a command for it
may be asked on any other. With one instance (no Redis URL) there is nothing to route:
`Router` answers "nobody else holds anyone". With a Redis URL, `RedisRouter` keeps:

- `agent:{server_id}` = `{instance}/{session}`: who holds the agent now, with a TTL that
  the holder refreshes. A new session takes the key unconditionally (the newest
  connection wins, as on one instance); a refresh or a release touches it only while it
  still names the same session (compare-and-set / compare-and-delete in Lua), so an
  instance that lost an agent to another never takes it back nor marks it offline.
- `instance:{id}`, a liveness key refreshed every second: a caller waiting on a command
  routed to an instance that died learns it within seconds, not at its timeout.
- one pub/sub channel per instance, for the messages below, and one shared `results`
  channel for a result the agent delivered to an instance other than the one waiting
  (after reconnecting there, when the instance that sent its command died).

Messages are JSON objects with a type `t`:
- `cmd` {reply_to, items: [[server_id, command_id, frame]]}: signed command frames for
  agents the receiver holds. The frames are the ones the caller signed; the receiver only
  relays them, so a message forged on Redis cannot make an agent run anything.
- `reply` {id, body, sig}: an agent's signed result, relayed to the caller, which checks
  the signature again against the agent's key.
- `progress` {id, data}: the progress lines of a running command.
- `lost` {id, delivered, message}: the receiver could not deliver the command (the agent
  moved or its queue was full: `delivered` false, nothing ran) or the agent went away
  before answering (`delivered` true: its result, if it ran, lands when it reports).
- `registry` {org_id, server_id}: send the server's agent a new signed registry.

Pub/sub rather than streams: a command is worth delivering only to the instance that
holds the socket right now, and only while its caller waits; PUBLISH answers how many
subscribers got it, so "that instance is gone" is known at once and nothing stale waits
in a stream to be delivered late. Replays are harmless anyway: agents refuse a command
nonce they have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

AGENT_TTL_S = 30  # an owner key outlives a dead instance by at most this
REFRESH_EVERY_S = 5.0  # how often an instance renews the owner keys of its agents
ALIVE_TTL_S = 3  # an instance is dead once its liveness key is this old
SEND_BATCH = 500

Handler = Callable[[dict[str, Any]], None]


class RouterUnavailable(Exception):
    """Redis cannot be reached: agents held by other instances cannot be reached either."""


class Router:
    """One instance: every agent this instance can reach is one it holds."""

    shared = False
    instance_id = ""
    # How many times this instance has subscribed to its channel: a reply sent to it
    # while it was not subscribed is lost on the way (the sender stores it instead).
    subscriptions = 1

    def problem(self) -> str | None:
        """Why messages from other instances cannot reach this one now, or None."""
        return None

    def attach(self, handler: Handler) -> None:
        """`handler` receives the messages other instances send to this one."""

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def claim(self, server_id: uuid.UUID, session_id: str) -> None:
        """This instance holds the agent now."""

    async def release(self, server_id: uuid.UUID, session_id: str) -> bool:
        """The session ended; False if another instance holds a newer one."""
        return True

    async def refresh(self, held: dict[uuid.UUID, str]) -> list[uuid.UUID]:
        """Renew what this instance holds; returns the agents another instance took."""
        return []

    async def beat(self) -> None:
        """Say this instance is alive."""

    async def owners(self, server_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The instance holding each agent, for those another instance holds."""
        return {}

    async def alive(self, instances: Iterable[str]) -> set[str]:
        return set()

    async def send(self, instance: str, message: dict[str, Any]) -> int:
        """Deliver to another instance; how many instances received it (0: it is gone)."""
        return 0

    def tell(self, instance: str, message: dict[str, Any]) -> None:
        """`send` without waiting for the answer."""

    def tell_all(self, message: dict[str, Any]) -> None:
        """A result for whichever instance waits for it."""


def _key_scripts() -> tuple[str, str]:
    refresh = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
    release = """
local current = redis.call('GET', KEYS[1])
if current == false then return 1 end
if current == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""
    return refresh, release


class RedisRouter(Router):
    shared = True

    def __init__(self, url: str, instance_id: str) -> None:
        self.url = url
        self.instance_id = instance_id
        self._client: Any = None
        self._prefix = "serverflow:0:"
        self._handler: Handler = lambda message: None
        self._outbox: asyncio.Queue[tuple[str, bytes, asyncio.Future[int] | None]] = asyncio.Queue(
            50_000
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh_script: Any = None
        self._release_script: Any = None
        self._down_since: float | None = None
        self.subscriptions = 0
        self._not_listening: str | None = "not subscribed yet"

    def problem(self) -> str | None:
        return (
            None if self._not_listening is None else f"Redis is unreachable ({self._not_listening})"
        )

    def attach(self, handler: Handler) -> None:
        self._handler = handler

    def _channel(self, instance: str) -> str:
        return f"{self._prefix}instance:{instance}"

    @property
    def _results(self) -> str:
        return f"{self._prefix}results"

    def _agent_key(self, server_id: uuid.UUID) -> str:
        return f"{self._prefix}agent:{server_id}"

    def _value(self, session_id: str) -> str:
        return f"{self.instance_id}/{session_id}"

    async def start(self) -> None:
        from serverflow.bus_redis import connect

        self._client, self._prefix = connect(self.url, f"serverflow-{self.instance_id}-routes")
        refresh, release = _key_scripts()
        self._refresh_script = self._client.register_script(refresh)
        self._release_script = self._client.register_script(release)
        self._tasks = [
            asyncio.create_task(self._sender(), name="routes-sender"),
            asyncio.create_task(self._listener(), name="routes-listener"),
        ]

    async def stop(self) -> None:
        from serverflow.bus_redis import UNREACHABLE

        with contextlib.suppress(TimeoutError):  # replies still queued at shutdown
            await asyncio.wait_for(self._outbox.join(), 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(*UNREACHABLE):
                await self._client.delete(f"{self._prefix}instance:{self.instance_id}")
            with contextlib.suppress(*UNREACHABLE):
                await self._client.aclose()
            self._client = None

    # -- keys ----------------------------------------------------------------------

    async def _call(self, what: str, coro: Any) -> Any:
        from serverflow.bus_redis import UNREACHABLE, _reason

        try:
            result = await coro
        except UNREACHABLE as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "agent routing: Redis is unreachable (%s while %s); only the agents "
                    "connected to this instance can get commands from it meanwhile",
                    _reason(exc),
                    what,
                )
            raise RouterUnavailable(_reason(exc)) from exc
        if self._down_since is not None:
            log.info(
                "agent routing: Redis is reachable again after %.1f s",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return result

    async def claim(self, server_id: uuid.UUID, session_id: str) -> None:
        with contextlib.suppress(RouterUnavailable):  # the next refresh claims it
            await self._call(
                "claiming an agent",
                self._client.set(
                    self._agent_key(server_id), self._value(session_id), ex=AGENT_TTL_S
                ),
            )

    async def release(self, server_id: uuid.UUID, session_id: str) -> bool:
        try:
            released = await self._call(
                "releasing an agent",
                self._release_script(
                    keys=[self._agent_key(server_id)], args=[self._value(session_id)]
                ),
            )
        except RouterUnavailable:
            return True  # nobody can tell: as on one instance, it is offline
        return bool(released)

    async def refresh(self, held: dict[uuid.UUID, str]) -> list[uuid.UUID]:
        if not held:
            return []
        ids = list(held)
        # A pipeline of script calls; on a connection error nothing is known to be lost.
        async with self._client.pipeline(transaction=False) as pipe:
            for server_id in ids:
                await self._refresh_script(
                    keys=[self._agent_key(server_id)],
                    args=[self._value(held[server_id]), AGENT_TTL_S],
                    client=pipe,
                )
            try:
                answers = await self._call("renewing agent routes", pipe.execute())
            except RouterUnavailable:
                return []
        return [server_id for server_id, kept in zip(ids, answers, strict=True) if not kept]

    async def beat(self) -> None:
        with contextlib.suppress(RouterUnavailable):
            await self._call(
                "saying this instance is alive",
                self._client.set(
                    f"{self._prefix}instance:{self.instance_id}", str(time.time()), ex=ALIVE_TTL_S
                ),
            )

    async def owners(self, server_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        ids = list(server_ids)
        if not ids:
            return {}
        if self._not_listening is not None:
            # The command would reach the agent but its result could not come back.
            raise RouterUnavailable(
                f"not subscribed to this instance's channel: {self._not_listening}"
            )
        values = await self._call(
            "looking up agents", self._client.mget([self._agent_key(i) for i in ids])
        )
        found = {}
        for server_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            instance = value.decode().partition("/")[0]
            if instance != self.instance_id:
                found[server_id] = instance
        return found

    async def alive(self, instances: Iterable[str]) -> set[str]:
        names = sorted(set(instances))
        if not names:
            return set()
        try:
            values = await self._call(
                "checking instances",
                self._client.mget([f"{self._prefix}instance:{name}" for name in names]),
            )
        except RouterUnavailable:
            return set(names)  # unknown: do not give up on their commands for it
        return {name for name, value in zip(names, values, strict=True) if value is not None}

    # -- messages ------------------------------------------------------------------

    def _queue(
        self, channel: str, message: dict[str, Any], answer: asyncio.Future[int] | None
    ) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        try:
            self._outbox.put_nowait((channel, payload, answer))
        except asyncio.QueueFull:
            log.warning("agent routing: too many messages waiting; dropping a %s", message["t"])
            if answer is not None:
                answer.set_result(0)

    async def send(self, instance: str, message: dict[str, Any]) -> int:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue(self._channel(instance), message, answer)
        return await answer

    def tell(self, instance: str, message: dict[str, Any]) -> None:
        self._queue(self._channel(instance), message, None)

    def tell_all(self, message: dict[str, Any]) -> None:
        self._queue(self._results, message, None)

    async def _sender(self) -> None:
        """One task publishes everything, a pipeline per batch."""
        from serverflow.bus_redis import UNREACHABLE, _reason

        while True:
            batch = [await self._outbox.get()]
            while len(batch) < SEND_BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for channel, payload, _ in batch:
                        pipe.publish(channel, payload)
                    counts = await pipe.execute()
            except UNREACHABLE as exc:
                log.debug("agent routing: publishing failed: %s", _reason(exc))
                counts = [0] * len(batch)  # not delivered: the callers are told at once
            for (_, _, answer), count in zip(batch, counts, strict=True):
                if answer is not None and not answer.done():
                    answer.set_result(int(count))
                self._outbox.task_done()

    async def _listener(self) -> None:
        from serverflow.bus_redis import subscribe_forever

        await subscribe_forever(
            self._client,
            [self._channel(self.instance_id), self._results],
            self._received,
            on_up=self._subscribed,
            on_down=self._unsubscribed,
        )

    def _subscribed(self) -> None:
        self._not_listening = None
        self.subscriptions += 1

    def _unsubscribed(self, exc: BaseException) -> None:
        from serverflow.bus_redis import _reason

        self._not_listening = _reason(exc)

    def _received(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise ValueError("not a routing message")
            self._handler(message)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("agent routing: ignoring a malformed message: %s", exc)
        except Exception:
            log.exception("agent routing: handling a %s message failed", raw[:40])


def make_router(redis_url: str, instance_id: str) -> Router:
    return RedisRouter(redis_url, instance_id) if redis_url else Router()
