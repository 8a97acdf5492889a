"""Agent side: the `pm2` runtime for deploys, and the pm2.* actions that read and restart it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serverflow_agent.plugin_api import DeploySettings, hookimpl
from serverflow_contract.actions import ActionSpec
from serverflow_contract.runtime import Runtime

PROCESS_NAME = {"type": "string", "pattern": "^[a-z0-9][A-Za-z0-9_.-]*$", "maxLength": 160}
PREFIX = {"type": "string", "pattern": "^[a-z0-9_-]*$", "maxLength": 80}


def _params(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


# pm2 starts its daemon on first use: none of these may hand it their memory limit.
ACTIONS = [
    ActionSpec(
        name="pm2.status",
        description="List the PM2 processes (name, pid, status, restarts, memory, CPU).",
        kind="read",
        handler="serverflow_runtime_pm2.actions:status",
        params_schema=_params({"prefix": PREFIX}),
        timeout=30,
        limit_children=False,
    ),
    ActionSpec(
        name="pm2.logs",
        description="The last output lines of PM2 processes (one by name, or all with a prefix).",
        kind="read",
        handler="serverflow_runtime_pm2.actions:logs",
        params_schema=_params(
            {
                "name": PROCESS_NAME,
                "prefix": PREFIX,
                "lines": {"type": "integer", "minimum": 1, "maximum": 1000},
            }
        ),
        timeout=30,
        limit_children=False,
    ),
    ActionSpec(
        name="pm2.restart",
        description="Restart one PM2 process by name.",
        kind="change",
        handler="serverflow_runtime_pm2.actions:restart",
        params_schema=_params({"name": PROCESS_NAME}, ("name",)),
        timeout=60,
        limit_children=False,
    ),
]


@hookimpl
def register_actions(register: Callable[[ActionSpec], None]) -> None:
    for spec in ACTIONS:
        register(spec)


@hookimpl
def register_runtimes(register: Callable[[Runtime], None], settings: DeploySettings) -> None:
    # Imported here: only a deploy (in the action runner) needs it, not the idle agent.
    from serverflow_runtime_pm2.pm2 import Pm2Runtime

    register(Pm2Runtime(settings.pm2_home))
