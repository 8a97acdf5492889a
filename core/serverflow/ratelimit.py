"""Per-caller rate limits (token bucket), for the REST API and the MCP endpoint."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from serverflow.errors import TooManyRequests


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """`per_minute` calls per caller, in bursts of up to `burst` (default: a minute's worth).

    In memory, per control-plane process: with several instances behind a load balancer a
    caller gets the limit at each instance.
    """

    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst or per_minute)
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str, what: str = "API") -> None:
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > 100_000:  # forget the idle ones
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.at < 300}
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) / self.rate)
            raise TooManyRequests(
                f"Too many {what} calls: the limit is {round(self.rate * 60)} per minute; "
                f"retry in {wait} s.",
                code="RATE001",
                retry_after=wait,
            )
        bucket.tokens -= 1
