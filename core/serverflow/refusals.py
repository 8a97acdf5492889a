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
        """Record one refusal (see the module's docstring for what is written when)."""
        now = self.clock()
        if now - self._window >= self.window_s:
            await self.flush(now)
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
        await self._write(kind, dict(details or {}))

    async def flush(self, now: float | None = None) -> None:
        """Write one summary entry per kind seen more than once, and start a new window."""
        # Swapped before any await: a refusal noted meanwhile belongs to the new window.
        counts, self._counts = self._counts, {}
        self._window = self.clock() if now is None else now
        async with self._lock:
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
        """Flush at the end of every window, until cancelled (the app flushes at stop)."""
        while True:
            await asyncio.sleep(self.window_s / 4)
            if self._counts and self.clock() - self._window >= self.window_s:
                await self.flush()

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
