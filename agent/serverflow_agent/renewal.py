"""Certificate renewal: the agent checks its certificates itself, on a timer.

Renewal must not depend on the control plane being up (a site keeps serving when it is
down, so its certificate must keep being renewed too). Every `acme.renew_check_hours`
(default 12) the agent runs the `proxy.renew_certificates` action locally, through the
same executor as commands (a subprocess with a timeout and a memory limit); certificates
of routed apps with `acme.renew_days` or less left are renewed and nginx reloaded. What
was renewed, or failed, is reported to the control plane as an `agent.certificates` event
(kept in the outbox while disconnected) and logged.

This is the agent's own housekeeping, not a command: it takes no input from the control
plane, only renews what is already configured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from serverflow_agent.executor import Executor
from serverflow_contract.actions import ActionSpec

log = logging.getLogger("serverflow_agent.renewal")

RENEW_ACTION = "proxy.renew_certificates"
EVENT_KIND = "certificates"
FIRST_CHECK_MAX_S = 300.0  # after a (re)start, check soon: the machine may have been off


class Renewer:
    def __init__(
        self,
        executor: Executor,
        spec: ActionSpec,
        interval_s: float,
        report: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.executor = executor
        self.spec = spec
        self.interval_s = interval_s
        self.report = report

    async def run(self) -> None:
        delay = min(self.interval_s, FIRST_CHECK_MAX_S)
        while True:
            await asyncio.sleep(delay)
            delay = self.interval_s
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("certificate renewal check failed")

    async def check(self) -> dict[str, Any] | None:
        """Renew what is due now; the report, or None when the check itself failed."""
        outcome = await self.executor.run(self.spec, {})
        if outcome.status != "ok" or not isinstance(outcome.output, dict):
            log.warning("certificate renewal failed: %s %s", outcome.code, outcome.message)
            return None
        out: dict[str, Any] = outcome.output
        for name in out.get("renewed", []):
            log.info("certificate for %s renewed", name)
        for name, why in out.get("failed", {}).items():
            log.warning("certificate for %s could not be renewed: %s", name, why)
        if out.get("renewed") or out.get("failed"):
            await self.report(out)
        return out
