"""The built-in actions, registered through the `serverflow_agent` entry point `builtin`
like any third-party plugin. The system.* handlers live in serverflow_agent.system, the
deploy ones in serverflow_agent.deploy (imported only by the action runner)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serverflow_agent.hookspecs import hookimpl
from serverflow_contract import desired as schemas
from serverflow_contract import naming
from serverflow_contract.actions import ActionSpec

SERVICE_NAME = r"[A-Za-z0-9@._][A-Za-z0-9@._-]{0,99}"
APP_LOGS_FOLLOW_MAX_S = 120


def _params(properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties or {}, "additionalProperties": False}


ACTIONS = [
    ActionSpec(
        name="system.info",
        description="Host name, operating system, kernel, architecture, CPUs, memory, boot time.",
        kind="read",
        handler="serverflow_agent.system:info",
        params_schema=_params(),
        timeout=10,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="system.metrics",
        description="CPU, load, memory, disk, network and uptime, as sent in heartbeats.",
        kind="read",
        handler="serverflow_agent.system:metrics",
        params_schema=_params(),
        timeout=10,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="system.disk_usage",
        description="Usage of the file system holding `path`, or of every mounted one.",
        kind="read",
        handler="serverflow_agent.system:disk_usage",
        params_schema=_params(
            {"path": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^/.*$"}}
        ),
        timeout=10,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="system.top_processes",
        description="The processes using the most CPU or memory (names only, no command lines).",
        kind="read",
        handler="serverflow_agent.system:top_processes",
        params_schema=_params(
            {
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                "sort_by": {"type": "string", "enum": ["cpu", "memory"]},
            }
        ),
        timeout=15,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="system.service_status",
        description="State of a systemd unit (systemctl show): load, active and sub state, PID.",
        kind="read",
        handler="serverflow_agent.system:service_status",
        # A name may not start with "-": it must never be read as a systemctl option.
        params_schema={
            **_params({"name": {"type": "string", "pattern": f"^{SERVICE_NAME}$"}}),
            "required": ["name"],
        },
        timeout=15,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="git.resolve",
        description=(
            "The commit a branch of a git repository points to, or without a branch the "
            "repository's default branch and its commit (git ls-remote)."
        ),
        kind="read",
        handler="serverflow_agent.deploy.git:resolve",
        params_schema=schemas.GIT_RESOLVE,
        timeout=90,
        memory_limit_mb=256,
        limit_children=False,
    ),
    ActionSpec(
        name="app.logs",
        description=(
            "The last lines an app's processes printed here (stdout and stderr, merged in "
            "time order), or those after `cursor`; with follow_s, each new line as a "
            "progress event for that many seconds (docs/deploys.md, Logs)."
        ),
        kind="read",
        handler="serverflow_agent.app_logs:read",
        params_schema={
            **_params(
                {
                    "app": {
                        "type": "string",
                        "pattern": f"^(?:{naming.APP_NAME})$",
                        "maxLength": naming.APP_NAME_MAX,
                    },
                    "lines": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "follow_s": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": APP_LOGS_FOLLOW_MAX_S,
                    },
                    "cursor": {"type": "string", "pattern": "^[A-Za-z0-9_-]*$", "maxLength": 65536},
                }
            ),
            "required": ["app"],
        },
        timeout=APP_LOGS_FOLLOW_MAX_S + 30,
        memory_limit_mb=256,
        limit_children=False,  # the runtime's own tools (pm2 jlist) run without the limit
    ),
    ActionSpec(
        name="state.apply",
        description=(
            "Reconcile the apps on this server with a desired-state document: fetch, build, "
            "start, health-check, switch the proxy, stop old releases (docs/deploys.md)."
        ),
        kind="change",
        handler="serverflow_agent.deploy.reconcile:apply",
        params_schema=schemas.STATE_APPLY,
        timeout=1800,
        memory_limit_mb=512,
        # Builds, the PM2 daemon and the apps it starts must not inherit the limit.
        limit_children=False,
    ),
    ActionSpec(
        name="proxy.renew_certificates",
        description=(
            "Renew the TLS certificates of routed apps that expire within acme.renew_days, "
            "then reload nginx. The agent also runs this by itself every few hours."
        ),
        kind="change",
        handler="serverflow_agent.proxy:renew",
        params_schema=_params(),
        timeout=900,
        memory_limit_mb=256,
        limit_children=False,  # certbot
    ),
]


@hookimpl
def register_actions(register: Callable[[ActionSpec], None]) -> None:
    for spec in ACTIONS:
        register(spec)
