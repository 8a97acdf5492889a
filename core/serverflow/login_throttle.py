"""Sign-in throttling per account and source address: an exponential delay, never a lockout.

Failures are rows of `login_failures`, so every control-plane instance sharing the
database sees them. After `login_max_failures` failures for one account from one address
within `login_window_minutes`, each further attempt from that address must wait 1 s, 2 s,
4 s ... (at most MAX_DELAY_SECONDS) after the last failure, and the password is not even
checked while it waits. Other addresses are not slowed down by those failures, so knowing
someone's e-mail address is not enough to keep them out.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from serverflow.errors import TooManyRequests
from serverflow.models import LoginFailure
from serverflow.settings import Settings

MAX_DELAY_SECONDS = 15 * 60
# One address may fail this many times login_max_failures across all accounts before it
# is slowed down too (password spraying from one address).
ADDRESS_FACTOR = 4


def delay(failures: int, free: int) -> int:
    """Seconds an attempt waits after the last of `failures` failures; `free` cost nothing."""
    if failures < free:
        return 0
    return int(min(2 ** min(failures - free, 20), MAX_DELAY_SECONDS))


async def _wait(now: datetime, since: datetime, free: int, **match: Any) -> int:
    failures = LoginFailure.filter(at__gte=since, **match)
    count = await failures.count()
    if count < free:
        return 0
    last = await failures.order_by("-at").first()
    if last is None:
        return 0
    at = last.at if last.at.tzinfo else last.at.replace(tzinfo=UTC)
    remaining = (at + timedelta(seconds=delay(count, free)) - now).total_seconds()
    return max(0, math.ceil(remaining))


async def check(email: str, ip: str, settings: Settings, now: datetime) -> None:
    """Raise AUTH005 (with Retry-After) if `ip` must still wait before trying `email` again."""
    since = now - timedelta(minutes=settings.login_window_minutes)
    free = settings.login_max_failures
    pair = await _wait(now, since, free, email=email, ip=ip)
    address = await _wait(now, since, free * ADDRESS_FACTOR, ip=ip)
    wait = max(pair, address)
    if not wait:
        return
    whom = f"for {email} from your address" if pair >= address else "from your address"
    raise TooManyRequests(
        f"Too many failed sign-in attempts {whom}; wait {wait} s before trying again "
        "(each further failure doubles the wait). Sign-in from other addresses is not "
        "affected; if the password is forgotten, an administrator can set a new one with "
        "`serverflow users set-password`.",
        code="AUTH005",
        retry_after=wait,
    )


async def record(email: str, ip: str, now: datetime) -> LoginFailure:
    """Count an attempt as failed (before its password is checked, so parallel ones see it)."""
    return await LoginFailure.create(email=email[:254], ip=ip, at=now)


async def forget_old(settings: Settings, now: datetime) -> None:
    """Drop failures older than the window: they no longer count."""
    since = now - timedelta(minutes=settings.login_window_minutes)
    await LoginFailure.filter(at__lt=since).delete()


async def clear(email: str, ip: str) -> None:
    """A right password from `ip`: its failures for `email` stop counting."""
    await LoginFailure.filter(email=email[:254], ip=ip).delete()
