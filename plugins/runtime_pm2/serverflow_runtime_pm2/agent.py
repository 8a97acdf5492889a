"""Agent side: the actions that drive the real `pm2` binary."""

from __future__ import annotations

from collections.abc import Callable

from serverflow_agent.actions import ActionSpec
from serverflow_agent.hookspecs import hookimpl

PREFIX_SCHEMA = {
    "type": "object",
    "properties": {"prefix": {"type": "string", "pattern": "^[a-z0-9-]*$", "maxLength": 80}},
    "additionalProperties": False,
}


@hookimpl
def register_actions(register: Callable[[ActionSpec], None]) -> None:
    register(
        ActionSpec(
            name="pm2.status",
            description="List the PM2 processes (name, pid, status, restarts, memory, CPU).",
            kind="read",
            handler="serverflow_runtime_pm2.pm2:status",
            params_schema=PREFIX_SCHEMA,
            timeout=20,
        )
    )
