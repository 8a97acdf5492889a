"""Creating an app, and an app's page: deployments, live log, deploy and rollback."""

from __future__ import annotations

import shlex

from quart import render_template
from quart_schema import hide

from serverflow.api.apps import get_app
from serverflow.controlplane import current
from serverflow.deploys.addresses import app_url
from serverflow.deploys.service import decrypt_env
from serverflow.deploys.webhooks import hook_urls
from serverflow.models import AppServer, Deployment, DeploymentStatus, Role, Server
from serverflow.web import bp
from serverflow.web.viewer import Viewer, page


@bp.get("/apps/new")
@hide
@page(Role.MEMBER)
async def new_app(viewer: Viewer) -> str:
    servers = await Server.all().order_by("name")
    runtimes = sorted(current().plugins.runtimes, key=lambda r: r.name)
    return await render_template(
        "app_new.html", servers=servers, runtimes=runtimes, active="overview"
    )


@bp.get("/apps/<app_id>")
@hide
@page()
async def app_detail(viewer: Viewer, app_id: str) -> str:
    app = await get_app(app_id)
    cp = current()
    placements = await AppServer.filter(app_id=app.id)
    servers = {s.id: s for s in await Server.filter(id__in=[p.server_id for p in placements])}
    urls: dict[str, list[str]] = {}  # the app's URLs, each with the servers it is on
    for placement in sorted(placements, key=lambda p: servers[p.server_id].name):
        url = app_url(app, placement, servers[placement.server_id])
        if url is not None:
            urls.setdefault(url, []).append(servers[placement.server_id].name)
    deployments = await Deployment.filter(app_id=app.id).order_by("-created_at").limit(50)
    active = next(
        (d for d in deployments if d.status in (DeploymentStatus.RUNNING, DeploymentStatus.QUEUED)),
        deployments[0] if deployments else None,
    )
    env_names = sorted(decrypt_env(cp.keys.cipher, app.env_encrypted))
    webhook = None
    if viewer.can(Role.ADMIN):  # the secret is shown to admins only
        github, gitlab = hook_urls(cp.settings.base_url, app.organization_id, app.id)
        webhook = {
            "github": github,
            "gitlab": gitlab,
            "secret": cp.keys.cipher.decrypt(app.webhook_secret_encrypted),
        }
    edit = {  # the edit form's texts of the argv settings, as one would type them
        "build": "\n".join(shlex.join(step) for step in app.build_commands or []),
        "start": shlex.join(app.start_command) if app.start_command else "",
    }
    return await render_template(
        "app.html",
        app=app,
        edit=edit,
        runtimes=sorted(cp.plugins.runtimes, key=lambda r: r.name),
        placements=placements,
        urls=urls,
        servers=servers,
        server_names={str(k): s.name for k, s in servers.items()},
        deployments=deployments,
        following=active,
        env_names=env_names,
        webhook=webhook,
        active="overview",
    )
