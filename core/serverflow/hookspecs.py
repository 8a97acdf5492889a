"""Every extension point of the control plane. Plugins implement them with `hookimpl`.

The `register_*` hooks hand the plugin a callback; the plugin calls it with objects that
implement the matching interface in `serverflow_contract.interfaces`. Agent-side extension points
are in `serverflow_agent.hookspecs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from serverflow_contract.interfaces import hookimpl

hookspec = pluggy.HookspecMarker("serverflow")

Register = Callable[[Any], None]
__all__ = ["Register", "hookimpl", "hookspec"]


@hookspec
def register_runtimes(register: Register) -> None:
    """Register process runtimes (interfaces.Runtime) that run app releases."""


@hookspec
def register_dns_providers(register: Register) -> None:
    """Register DNS providers (interfaces.DnsProvider) for zones and records."""


@hookspec
def register_backup_targets(register: Register) -> None:
    """Register backup targets (interfaces.BackupTarget) that store snapshots."""


@hookspec
def register_server_providers(register: Register) -> None:
    """Register cloud server providers (interfaces.ServerProvider) that create VPSes."""


@hookspec
def register_cron_backends(register: Register) -> None:
    """Register cron backends (interfaces.CronBackend) where scheduled jobs live."""


@hookspec
def register_templates(register: Register) -> None:
    """Register one-click app templates (interfaces.Template) for the marketplace."""


@hookspec
def register_blueprints(register: Register) -> None:
    """Register Quart blueprints that add API routes or dashboard pages."""


@hookspec
def register_dashboard_panels(register: Register) -> None:
    """Register dashboard panels (interfaces.DashboardPanel)."""


@hookspec
def on_event(event: Any) -> Any:
    """Called for each lifecycle event (events.Event); may return an awaitable."""
