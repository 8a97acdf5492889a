"""Answers to the read-only questions (servers, apps, deployments, logs, actions).

Everything is read inside short `scoped()` blocks of the caller's organisation: another
organisation's servers and apps are simply not there.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from serverflow import runtime_logs
from serverflow.agents.registry import allowed_actions
from serverflow.controlplane import ControlPlane
from serverflow.deploys.addresses import app_url
from serverflow.deploys.service import decrypt_env
from serverflow.errors import NotFound
from serverflow.models import (
    App,
    AppServer,
    Command,
    Deployment,
    DeploymentLog,
    Event,
    Server,
)
from serverflow.operations.documents import release_view
from serverflow.operations.operation import as_uuid, find_app, find_server, masked
from serverflow.tenancy import scoped

MAX_LOG_LINES = 1000


def _at(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def server_view(cp: ControlPlane, server: Server) -> dict[str, Any]:
    return {
        "id": str(server.id),
        "name": server.name,
        "status": str(server.status),
        "connected": cp.hub.connected(server),
        "last_seen_at": _at(server.last_seen_at),
        "security_mode": str(server.security_mode),
        "hostname": server.hostname,
        "agent_version": server.agent_version,
        "metrics": server.metrics,
        "description": server.description,
    }


async def list_servers(cp: ControlPlane, org_id: uuid.UUID) -> dict[str, Any]:
    async with scoped(org_id):
        servers = await Server.all().order_by("name")
    return {"servers": [server_view(cp, s) for s in servers]}


async def get_server(cp: ControlPlane, org_id: uuid.UUID, ref: str) -> dict[str, Any]:
    async with scoped(org_id):
        server = await find_server(ref)
        placements = await AppServer.filter(server_id=server.id)
        apps = {a.id: a for a in await App.filter(id__in=[p.app_id for p in placements])}
        live_ids = [p.live_deployment_id for p in placements if p.live_deployment_id]
        live = {d.id: d for d in await Deployment.filter(id__in=live_ids)} if live_ids else {}
        events = await Event.filter(server_id=server.id).order_by("-id").limit(10)
        commands = await Command.filter(server_id=server.id).order_by("-created_at").limit(10)
    actions = allowed_actions(server)
    return {
        **server_view(cp, server),
        "registered_at": _at(server.registered_at),
        "apps": [
            {
                "name": apps[p.app_id].name,
                "live": release_view(live.get(p.live_deployment_id))
                if p.live_deployment_id
                else None,
            }
            for p in sorted(placements, key=lambda p: apps[p.app_id].name)
        ],
        "actions": {
            kind: [a["name"] for a in actions if a["kind"] == kind]
            for kind in ("read", "change", "destructive")
        },
        "recent_events": [{"kind": e.kind, "at": _at(e.at), "data": e.data} for e in events],
        "recent_commands": [
            {
                "action": c.action,
                "kind": c.kind,
                "status": str(c.status),
                "code": c.code,
                "issued_by": c.issued_by,
                "at": _at(c.created_at),
            }
            for c in commands
        ],
    }


async def list_actions(org_id: uuid.UUID, ref: str) -> dict[str, Any]:
    async with scoped(org_id):
        server = await find_server(ref)
    return {
        "server": server.name,
        "security_mode": str(server.security_mode),
        "actions": [
            {
                "name": a["name"],
                "kind": a["kind"],
                "description": a.get("description", ""),
                "params_schema": a.get("params_schema", {}),
                "timeout_s": a.get("timeout"),
            }
            for a in allowed_actions(server)
        ],
        "note": "read actions run at once with run_action; change and destructive ones are "
        "planned first (dry run).",
    }


def deployment_view(dep: Deployment, servers: dict[uuid.UUID, str]) -> dict[str, Any]:
    return {
        "id": str(dep.id),
        "server": servers.get(dep.server_id, str(dep.server_id)),
        "number": dep.number,
        "kind": dep.kind,
        "branch": dep.branch,
        "commit": dep.commit_sha,
        "release": dep.release,
        "status": str(dep.status),
        "reason": dep.reason,
        "triggered_by": dep.triggered_by,
        "created_at": _at(dep.created_at),
        "finished_at": _at(dep.finished_at),
        "duration_ms": dep.duration_ms,
    }


async def _app_servers(app: App) -> tuple[list[AppServer], dict[uuid.UUID, Server]]:
    placements = list(await AppServer.filter(app_id=app.id))
    servers = {s.id: s for s in await Server.filter(id__in=[p.server_id for p in placements])}
    return placements, servers


async def _app_summary(cp: ControlPlane, app: App) -> dict[str, Any]:
    placements, servers = await _app_servers(app)
    live_ids = [p.live_deployment_id for p in placements if p.live_deployment_id]
    live = {d.id: d for d in await Deployment.filter(id__in=live_ids)} if live_ids else {}
    return {
        "id": str(app.id),
        "name": app.name,
        "repo": app.repo_url,
        "branch": app.branch,  # None: the repository's default branch
        "default_branch": app.default_branch,
        "runtime": app.runtime,
        "domains": list(app.domains or []),
        "servers": [
            {
                "name": servers[p.server_id].name,
                "server_status": str(servers[p.server_id].status),
                "url": app_url(app, p, servers[p.server_id]),  # None until served
                "live": release_view(live.get(p.live_deployment_id))
                if p.live_deployment_id
                else None,
            }
            for p in sorted(placements, key=lambda p: servers[p.server_id].name)
        ],
    }


async def list_apps(cp: ControlPlane, org_id: uuid.UUID) -> dict[str, Any]:
    async with scoped(org_id):
        apps = await App.all().order_by("name")
        return {"apps": [await _app_summary(cp, a) for a in apps]}


async def get_app_output(
    cp: ControlPlane, org_id: uuid.UUID, issued_by: str, ref: str, lines: int = 200
) -> dict[str, Any]:
    """What the app's processes print on its servers (serverflow.runtime_logs), merged."""
    async with scoped(org_id):
        app = await find_app(ref)
    found = await runtime_logs.snapshot(cp, org_id, app, issued_by, max(1, min(lines, 1000)))
    return {
        "app": app.name,
        "lines": [
            {k: line.get(k) for k in ("server", "type", "index", "release", "stream", "line")}
            for line in found.lines
        ],
        "problems": [
            {"server": p.server, "code": p.code, "message": p.message} for p in found.problems
        ],
    }


async def get_app(cp: ControlPlane, org_id: uuid.UUID, ref: str) -> dict[str, Any]:
    async with scoped(org_id):
        app = await find_app(ref)
        summary = await _app_summary(cp, app)
        _, servers = await _app_servers(app)
        recent = await Deployment.filter(app_id=app.id).order_by("-created_at").limit(10)
    names = {sid: s.name for sid, s in servers.items()}
    return {
        **summary,
        "settings": {
            "build": app.build_commands,
            "start": app.start_command,
            "port": app.port,
            "health_path": app.health_path,
            "health_timeout_s": app.health_timeout_s,
            "tls": app.tls,
            "keep_releases": app.keep_releases,
            "formation": dict(app.formation or {}),
            "env": masked(decrypt_env(cp.keys.cipher, app.env_encrypted)),
        },
        "recent_deployments": [deployment_view(d, names) for d in recent],
    }


async def get_app_logs(
    org_id: uuid.UUID,
    ref: str,
    deployment: str | None = None,
    server: str | None = None,
    lines: int = 200,
) -> dict[str, Any]:
    """The log of one deployment of the app (the latest unless named), its last `lines`."""
    lines = max(1, min(lines, MAX_LOG_LINES))
    async with scoped(org_id):
        app = await find_app(ref)
        _, servers = await _app_servers(app)
        query = Deployment.filter(app_id=app.id)
        if deployment is not None:
            dep_id = as_uuid(deployment)
            dep = await query.filter(id=dep_id).first() if dep_id else None
        else:
            if server is not None:
                query = query.filter(server_id=(await find_server(server)).id)
            dep = await query.order_by("-created_at").first()
        if dep is None:
            problem = (
                f"has no deployment {deployment!r} (get_app lists them)"
                if deployment
                else "has not been deployed yet"
            )
            raise NotFound(f"{app.name} {problem}", code="DEP001")
        total = await DeploymentLog.filter(deployment_id=dep.id).count()
        rows = list(await DeploymentLog.filter(deployment_id=dep.id).order_by("-seq").limit(lines))
    rows.reverse()
    return {
        "app": app.name,
        "deployment": deployment_view(dep, {sid: s.name for sid, s in servers.items()}),
        "lines": [f"[{r.stage}] {r.line}" if r.stage else r.line for r in rows],
        "shown": len(rows),
        "total_lines": total,
        "truncated": total > len(rows),
    }
