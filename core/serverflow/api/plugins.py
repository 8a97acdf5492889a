"""Plugins: the installed ones (as `serverflow plugins list` shows them), the marketplace
catalog, Install, and enable/disable. Plugins are shared by every organisation: changing
them needs an instance operator, and is audited in the instance chain."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from quart import current_app, request
from quart_schema import validate_request, validate_response

from serverflow import marketplace
from serverflow.api import bp
from serverflow.api.schemas import ErrorOut, Input
from serverflow.auth import actor, principal, requires
from serverflow.controlplane import current
from serverflow.errors import NotFound
from serverflow.events import record
from serverflow.models import Role


@bp.before_app_request
async def _refuse_disabled_plugin_routes() -> None:
    # Quart cannot unmount a blueprint: the routes of a disabled plugin answer 404.
    plugins = current().plugins
    for name in request.blueprints:
        owner = plugins.blueprint_owner(current_app.blueprints.get(name))
        if owner is not None and not plugins.host.is_enabled(owner):
            raise NotFound(f"this route belongs to the disabled plugin {owner}", code="PLG001")


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
    disabled_by_config: bool = False
    restart_required: bool = False


class PluginList(BaseModel):
    plugins: list[PluginOut]


class CatalogEntryOut(BaseModel):
    name: str
    description: str
    package: str
    version: str | None
    extension_points: list[str]
    installed_version: str | None
    plugins: list[str] = Field(description="Installed plugins this package provides.")


class CatalogOut(BaseModel):
    configured: bool
    plugins: list[CatalogEntryOut]


class InstallIn(Input):
    name: str = Field(min_length=1, max_length=100, description="Name in the catalog.")


class ActivationOut(BaseModel):
    name: str
    enabled: bool
    error: str | None
    blueprints: list[str]


class InstallOut(BaseModel):
    name: str
    package: str
    version: str | None
    plugins: list[ActivationOut]
    restart_required: bool


class PluginChangeOut(BaseModel):
    plugin: PluginOut
    restart_required: bool


def _plugin(name: str) -> PluginOut:
    row = next(r for r in current().plugins.report() if r["name"] == name)
    return PluginOut(**row)


async def _event(kind: str, data: dict[str, Any]) -> None:
    caller = principal()
    await record(current().bus, kind, caller.org_id, data={**data, "by": actor(caller)})


@bp.get("/plugins")
@requires(Role.VIEWER)
@validate_response(PluginList)
async def list_plugins() -> PluginList:
    return PluginList(plugins=[PluginOut(**row) for row in current().plugins.report()])


@bp.get("/plugins/catalog")
@requires(Role.VIEWER, atomic=False)
@validate_response(CatalogOut)
@validate_response(ErrorOut, 502)
async def plugin_catalog() -> CatalogOut:
    """Plugins the configured catalog offers, and which of them are installed."""
    market = marketplace.current(current_app)
    rows = [
        CatalogEntryOut(
            **view.entry.model_dump(),
            installed_version=view.installed_version,
            plugins=view.plugins,
        )
        for view in await market.catalog()
    ]
    return CatalogOut(configured=market.configured, plugins=rows)


@bp.post("/plugins/install")
@requires(Role.VIEWER, atomic=False, operator=True)
@validate_request(InstallIn)
@validate_response(InstallOut, 201)
@validate_response(ErrorOut, 403)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)
@validate_response(ErrorOut, 502)
async def install_plugin(data: InstallIn) -> tuple[InstallOut, int]:
    """pip-install a catalog plugin into the control plane and load it (restart if needed)."""
    result = await marketplace.current(current_app).install(data.name, current_app)
    out = InstallOut(
        name=result.entry.name,
        package=result.entry.package,
        version=result.entry.version,
        plugins=[
            ActivationOut(name=a.name, enabled=a.enabled, error=a.error, blueprints=a.blueprints)
            for a in result.activations
        ],
        restart_required=result.restart_required,
    )
    await _event(
        "plugin.installed",
        {
            "name": out.name,
            "package": out.package,
            "version": out.version,
            "plugins": [a.name for a in out.plugins],
            "restart_required": out.restart_required,
        },
    )
    return out, 201


@bp.post("/plugins/<name>/enable")
@requires(Role.VIEWER, atomic=False, operator=True)
@validate_response(PluginChangeOut)
@validate_response(ErrorOut, 403)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)
async def enable_plugin(name: str) -> PluginChangeOut:
    activation = marketplace.current(current_app).enable(name)
    restart = any(b not in current_app.blueprints for b in activation.blueprints)
    if restart:
        current().plugins.pending_restart.add(name)
    await _event("plugin.enabled", {"name": name, "error": activation.error})
    return PluginChangeOut(plugin=_plugin(name), restart_required=restart)


@bp.post("/plugins/<name>/disable")
@requires(Role.VIEWER, atomic=False, operator=True)
@validate_response(PluginChangeOut)
@validate_response(ErrorOut, 403)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)
async def disable_plugin(name: str) -> PluginChangeOut:
    marketplace.current(current_app).disable(name)
    await _event("plugin.disabled", {"name": name})
    return PluginChangeOut(plugin=_plugin(name), restart_required=False)
