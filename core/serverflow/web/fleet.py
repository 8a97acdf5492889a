"""Overview, adding a server, and a server's page."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from quart import render_template
from quart_schema import hide

from serverflow.errors import NotFound
from serverflow.models import App, AppServer, Deployment, DeploymentStatus, Event, Role, Server
from serverflow.web import bp
from serverflow.web.viewer import Viewer, page


@dataclass(frozen=True)
class AppRow:
    app: App
    state: str  # running | live | failed | none
    last: Deployment | None
    servers: list[str]
    has_live: bool  # a release is serving, whatever the last deploy did


def metric(server: Server, name: str) -> float | None:
    """cpu, memory or disk percentage from the server's latest heartbeat."""
    metrics: Any = server.metrics or {}
    if name == "cpu":
        value = metrics.get("cpu_percent")
    else:
        value = (metrics.get(name) or {}).get("percent")
    return float(value) if isinstance(value, int | float) else None


async def app_rows(apps: list[App], names: dict[uuid.UUID, str]) -> list[AppRow]:
    ids = [a.id for a in apps]
    placements = await AppServer.filter(app_id__in=ids) if ids else []
    rows = []
    for app in apps:
        mine = [p for p in placements if p.app_id == app.id]
        last = await Deployment.filter(app_id=app.id).order_by("-created_at").first()
        if last is not None and last.status in (DeploymentStatus.QUEUED, DeploymentStatus.RUNNING):
            state = "running"
        elif any(p.live_deployment_id for p in mine):
            state = "live"
        elif last is not None and last.status == DeploymentStatus.FAILED:
            state = "failed"
        else:
            state = "none"
        rows.append(
            AppRow(
                app,
                state,
                last,
                [names.get(p.server_id, "?") for p in mine],
                any(p.live_deployment_id for p in mine),
            )
        )
    return rows


@bp.get("/")
@hide
@page()
async def overview(viewer: Viewer) -> str:
    servers = await Server.all().order_by("name")
    apps = await App.all().order_by("name")
    rows = await app_rows(list(apps), {s.id: s.name for s in servers})
    return await render_template(
        "overview.html", servers=servers, apps=rows, metric=metric, active="overview"
    )


@bp.get("/servers/new")
@hide
@page(Role.MEMBER)
async def new_server(viewer: Viewer) -> str:
    return await render_template("server_new.html", active="overview")


async def get_server(server_id: str) -> Server:
    try:
        server = await Server.get_or_none(id=uuid.UUID(server_id))
    except ValueError:
        server = None
    if server is None:
        raise NotFound(f"server {server_id} not found", code="SRV001")
    return server


@bp.get("/servers/<server_id>")
@hide
@page()
async def server_detail(viewer: Viewer, server_id: str) -> str:
    server = await get_server(server_id)
    placements = await AppServer.filter(server_id=server.id)
    apps = await App.filter(id__in=[p.app_id for p in placements]).order_by("name")
    rows = await app_rows(list(apps), {server.id: server.name})
    events = await Event.filter(server_id=server.id).order_by("-id").limit(20)
    return await render_template(
        "server.html",
        server=server,
        apps=rows,
        events=events,
        metric=metric,
        active="overview",
    )
