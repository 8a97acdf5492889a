"""Per-caller rate limits (token bucket), for the REST API and the MCP endpoint.

`RateLimiter` keeps its buckets in memory: right for one instance. With a Redis URL,
`RedisRateLimiter` keeps them in Redis (one hash per caller, updated by a Lua script with
Redis's own clock), so a caller gets the limit once across all instances, not once per
instance. While Redis is unreachable it falls back to this instance's memory: callers
stay limited, and are not refused because of an outage that is not theirs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from serverflow.errors import TooManyRequests

log = logging.getLogger(__name__)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """`per_minute` calls per caller, in bursts of up to `burst` (default: a minute's worth)."""

    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst or per_minute)
        self._buckets: dict[str, _Bucket] = {}

    async def check(self, key: str, what: str = "API") -> None:
        """Take one call from `key`'s bucket, or raise RATE001 with Retry-After."""
        self._check_here(key, what)

    def _check_here(self, key: str, what: str) -> None:
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > 100_000:  # forget the idle ones
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.at < 300}
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            self._refuse(bucket.tokens, what)
        bucket.tokens -= 1

    def _refuse(self, tokens: float, what: str) -> None:
        wait = math.ceil((1 - tokens) / self.rate)
        raise TooManyRequests(
            f"Too many {what} calls: the limit is {round(self.rate * 60)} per minute; "
            f"retry in {wait} s.",
            code="RATE001",
            retry_after=wait,
        )

    async def close(self) -> None:
        """Nothing to close."""


# KEYS[1]: the bucket; ARGV: rate per second, burst. Returns {allowed, tokens left}.
BUCKET = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, tostring(tokens)}
"""


class RedisRateLimiter(RateLimiter):
    def __init__(self, url: str, name: str, per_minute: int, burst: int | None = None) -> None:
        super().__init__(per_minute, burst)
        self.url = url
        self.name = name
        self._client: Any = None
        self._script: Any = None
        self._down = False

    def _connect(self) -> None:
        from serverflow.bus_redis import connect

        # Short timeouts: a request waits on this; past them it is limited per instance.
        self._client, prefix = connect(
            self.url, f"serverflow-ratelimit-{self.name}", connect_timeout=1, timeout=1
        )
        self._prefix = f"{prefix}rate:{self.name}:"
        self._script = self._client.register_script(BUCKET)

    async def check(self, key: str, what: str = "API") -> None:
        from serverflow.bus_redis import UNREACHABLE, _reason

        if self._client is None:
            self._connect()
        try:
            allowed, tokens = await self._script(
                keys=[self._prefix + key], args=[self.rate, self.burst]
            )
        except UNREACHABLE as exc:
            if not self._down:
                self._down = True
                log.warning(
                    "rate limits (%s): Redis is unreachable (%s); limiting per instance "
                    "until it is back",
                    self.name,
                    _reason(exc),
                )
            self._check_here(key, what)
            return
        if self._down:
            self._down = False
            log.info("rate limits (%s): shared through Redis again", self.name)
        if not int(allowed):
            self._refuse(float(tokens), what)

    async def close(self) -> None:
        from serverflow.bus_redis import UNREACHABLE

        if self._client is not None:
            with contextlib.suppress(*UNREACHABLE):
                await self._client.aclose()
            self._client = None


def make_limiter(redis_url: str, name: str, per_minute: int) -> RateLimiter:
    if redis_url:
        return RedisRateLimiter(redis_url, name, per_minute)
    return RateLimiter(per_minute)
