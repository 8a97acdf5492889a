"""Installed plugins, as `serverflow plugins list` shows them."""

from __future__ import annotations

from pydantic import BaseModel
from quart_schema import validate_response

from serverflow.api import bp
from serverflow.auth import requires
from serverflow.controlplane import current
from serverflow.models import Role


class PluginOut(BaseModel):
    name: str
    module: str
    version: str | None
    distribution: str | None
    description: str | None
    hooks: list[str]
    provides: dict[str, list[str]]
    enabled: bool
    status: str
    error: str | None


class PluginList(BaseModel):
    plugins: list[PluginOut]


@bp.get("/plugins")
@requires(Role.VIEWER)
@validate_response(PluginList)
async def list_plugins() -> PluginList:
    return PluginList(plugins=[PluginOut(**row) for row in current().plugins.report()])
