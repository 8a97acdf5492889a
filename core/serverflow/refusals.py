"""Security refusals in the audit log, without letting a flood grow it without bound.

Every refusal worth knowing about (an agent handshake that fails, a forged result, an
install token nobody issued, a wrong password, a CSRF token missing, a rate limit hit...)
goes through `RefusalLog.note`. The first refusal of a kind (same chain, action, code,
reason, actor, source address and target) in a minute is written at once, so it shows in
the log as it happens; the repeats in that minute are only counted, and written as one
summary entry (`details.repeated`: how many more) when the minute is over. At most
`max_kinds` kinds are tracked per minute; beyond that, refusals are counted together per
chain, action and code. So a minute of flooding adds at most about twice `max_kinds`
entries, however many refusals come.

Refusals that cannot be tied to an organisation go to the instance chain (`INSTANCE`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serverflow import audit

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_KINDS = 200
ANY = "*"


@dataclass(frozen=True)
class _Kind:
    chain: uuid.UUID
    action: str
    code: str
    reason: str
    actor: str
    source: str
    target: str


@dataclass
class _Count:
    details: dict[str, Any]
    first: float
    last: float
    seen: int = 1


@dataclass
class RefusalLog:
    clock: Callable[[], float] = time.time
    window_s: float = WINDOW_S
    max_kinds: int = MAX_KINDS
    _window: float = field(default=0.0, init=False)
    _counts: dict[_Kind, _Count] = field(default_factory=dict, init=False)
    _ended: list[dict[_Kind, _Count]] = field(default_factory=list, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def note(
        self,
        chain: uuid.UUID,
        action: str,
        code: str,
        *,
        actor: str,
        source: str,
        target: str = "",
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record one refusal (see the module's docstring for what is written when).

        Counting is synchronous, so no refusal can be lost between two awaits; the only
        I/O here is the first entry of a kind, shielded: a caller cancelled meanwhile (a
        connection that timed out) does not lose it. Summaries are written by `run`.
        """
        now = self.clock()
        if now - self._window >= self.window_s:
            self._rotate(now)
        kind = _Kind(
            chain, action, code, reason[:300], actor[:300], (source or "unknown")[:64], target[:500]
        )
        if kind not in self._counts and len(self._counts) >= self.max_kinds:
            kind = _Kind(chain, action, code, ANY, ANY, ANY, ANY)  # too many: count together
        counted = self._counts.get(kind)
        if counted is not None:
            counted.seen += 1
            counted.last = now
            return
        self._counts[kind] = _Count(dict(details or {}), now, now)
        await asyncio.shield(self._write(kind, dict(details or {})))

    def _rotate(self, now: float) -> None:
        """End the window: its counts wait in `_ended` for their summaries."""
        if self._counts:
            self._ended.append(self._counts)
        self._counts = {}
        self._window = now

    async def flush(self, now: float | None = None) -> None:
        """End the window, and write one summary entry per kind seen more than once in the
        windows that ended (one writer at a time; shielded from the caller's cancellation)."""
        self._rotate(self.clock() if now is None else now)
        await asyncio.shield(self._write_summaries())

    async def _write_summaries(self) -> None:
        async with self._lock:
            while self._ended:
                counts = self._ended.pop(0)
                for kind, counted in counts.items():
                    if counted.seen > 1:
                        await self._write(
                            kind,
                            {
                                **counted.details,
                                "repeated": counted.seen - 1,
                                "first_at": _iso(counted.first),
                                "last_at": _iso(counted.last),
                            },
                        )

    async def run(self) -> None:
        """Write the summaries at the end of every window, until cancelled (the app
        flushes at stop). A failure is logged, never the end of the loop."""
        while True:
            await asyncio.sleep(self.window_s / 4)
            try:
                now = self.clock()
                if self._counts and now - self._window >= self.window_s:
                    self._rotate(now)
                if self._ended:
                    await asyncio.shield(self._write_summaries())
            except Exception:
                log.exception("writing the refusal summaries failed; retrying")

    async def _write(self, kind: _Kind, details: dict[str, Any]) -> None:
        details = {**details, "source": kind.source}
        if kind.reason:
            details["reason"] = kind.reason
        try:
            await audit.append(
                kind.chain,
                audit.Record(
                    actor=kind.actor,
                    action=kind.action,
                    target=kind.target,
                    details=details,
                    outcome=kind.code,
                ),
            )
        except Exception:  # a refusal must never fail because the log could not be written
            log.exception("could not audit the refusal %s %s", kind.action, kind.code)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
