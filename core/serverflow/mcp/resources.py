"""MCP resources: the server list, the app list, and an app's latest deployment log."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from serverflow.controlplane import current
from serverflow.mcp import reads
from serverflow.mcp.caller import caller

if TYPE_CHECKING:
    from serverflow.mcp.server import ServerFlowMCP


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str)


def register_resources(server: ServerFlowMCP) -> None:
    @server.resource(
        "serverflow://servers",
        name="servers",
        title="Servers",
        description="The organisation's servers with status, last seen and latest metrics.",
        mime_type="application/json",
    )
    async def servers() -> str:
        return _json(await server.guarded(lambda: reads.list_servers(current(), caller().org_id)))

    @server.resource(
        "serverflow://apps",
        name="apps",
        title="Apps",
        description="The organisation's apps with their live release on each server.",
        mime_type="application/json",
    )
    async def apps() -> str:
        return _json(await server.guarded(lambda: reads.list_apps(current(), caller().org_id)))

    @server.resource(
        "serverflow://apps/{app}/logs",
        name="app-logs",
        title="App deployment log",
        description="The last 200 lines of the app's latest deployment log (app: name or id).",
        mime_type="application/json",
    )
    async def app_logs(app: str) -> str:
        return _json(await server.guarded(lambda: reads.get_app_logs(caller().org_id, app)))
