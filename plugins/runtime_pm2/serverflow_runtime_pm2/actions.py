"""The pm2.* actions: status, logs and restart of release processes, for the control plane."""

from __future__ import annotations

from typing import Any

from serverflow_agent.plugin_api import deploy_settings
from serverflow_runtime_pm2.pm2 import Pm2Runtime

MAX_LOG_LINES = 1000


def _runtime() -> Pm2Runtime:
    return Pm2Runtime(deploy_settings().pm2_home)


def status(params: dict[str, Any]) -> dict[str, Any]:
    runtime = _runtime()
    return {"processes": [p.as_dict() for p in runtime.status(params.get("prefix", ""))]}


def logs(params: dict[str, Any]) -> dict[str, Any]:
    runtime = _runtime()
    lines = min(int(params.get("lines", 100)), MAX_LOG_LINES)
    if "name" in params:
        names = [params["name"]]
    else:
        names = [p.name for p in runtime.status(params.get("prefix", ""))]
    return {"logs": {name: runtime.logs(name, lines) for name in names}}


def restart(params: dict[str, Any]) -> dict[str, Any]:
    runtime = _runtime()
    name = params["name"]
    runtime.restart(name)
    found = [p.as_dict() for p in runtime.status(name) if p.name == name]
    return {"restarted": name, "process": found[0] if found else None}
