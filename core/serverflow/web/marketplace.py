"""The plugin marketplace page: installed plugins, the catalog, Install, enable/disable."""

from __future__ import annotations

from quart import current_app, render_template, request
from quart_schema import hide

from serverflow import marketplace
from serverflow.controlplane import current
from serverflow.errors import ServerFlowError
from serverflow.web import bp
from serverflow.web.viewer import Viewer, page

NOTICES = ("installed", "enabled", "disabled")


@bp.get("/plugins")
@hide
@page(tenant=False)  # the catalog may be fetched from a URL: no transaction meanwhile
async def plugins(viewer: Viewer) -> str:
    market = marketplace.current(current_app)
    catalog_error = None
    try:
        catalog = await market.catalog()
    except ServerFlowError as exc:
        catalog, catalog_error = [], exc
    notice = request.args.get("notice")
    return await render_template(
        "plugins.html",
        installed=current().plugins.report(),
        catalog=catalog,
        catalog_configured=market.configured,
        catalog_error=catalog_error,
        notice=notice if notice in NOTICES else None,
        notice_plugin=request.args.get("plugin", "")[:100],
        restart=request.args.get("restart") == "1",
        active="plugins",
    )
