"""Plannable app settings: create and update (kind `change`), delete (kind `destructive`).

Validation and checks are shared with the REST API (`serverflow.apps`), so an app made here
is exactly one the API would have made.
"""

from __future__ import annotations

from typing import Any

from serverflow.apps import (
    AppIn,
    AppPatch,
    apply_fields,
    check_domains_free,
    new_app,
    save_new_app,
    servers_by_ref,
)
from serverflow.controlplane import ControlPlane
from serverflow.errors import InvalidInput, NotFound
from serverflow.models import App, AppServer
from serverflow.operations.deploys import placements_of
from serverflow.operations.documents import apply_command, preview_document, release_view
from serverflow.operations.operation import Actor, Outcome, Proposal, find_app, masked, validated
from serverflow.tenancy import scoped

SETTINGS = (
    "repo_url",
    "branch",
    "build_commands",
    "start_command",
    "port",
    "health_path",
    "health_timeout_s",
    "domains",
    "tls",
    "runtime",
    "keep_releases",
)


def settings_of(app: App) -> dict[str, Any]:
    return {name: getattr(app, name) for name in SETTINGS}


class CreateApp:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        data = validated(AppIn, {k: v for k, v in args.items() if v is not None})
        async with scoped(actor.org_id):
            app, servers = await new_app(cp, data)
        return Proposal(
            kind="change",
            summary=f"Create app {app.name} ({app.repo_url}, "
            f"{app.branch or 'its default branch'}) on " + ", ".join(s.name for s in servers),
            preview={
                "action": "create_app",
                "app": {"name": app.name, **settings_of(app), "env": masked(data.env)},
                "servers": [s.name for s in servers],
                "next": "Creating an app deploys nothing: deploy it with deploy_app afterwards.",
            },
            params=data.model_dump(mode="json"),
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        data = AppIn.model_validate(params)
        async with scoped(actor.org_id):
            app, servers = await new_app(cp, data)
            await save_new_app(cp, app, servers)
        return Outcome(True, {"app": {"id": str(app.id), "name": app.name}}, "app created")


class UpdateApp:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        fields = {k: v for k, v in args.items() if v is not None and k != "app"}
        ref = args.get("app")
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("name the app to update", code="VAL001")
        data = validated(AppPatch, fields)
        async with scoped(actor.org_id):
            app = await find_app(ref)
            before = settings_of(app)
            apply_fields(app, data)  # on this copy only: it is not saved here
            await check_domains_free(app)
            after = settings_of(app)
            placed = {p.server_id for p in await AppServer.filter(app_id=app.id)}
            wanted = await servers_by_ref(data.servers) if data.servers is not None else []
        if data.servers is not None and placed - {s.id for s in wanted}:
            raise InvalidInput(
                "removing an app from a server is not supported yet; delete and recreate the app",
                code="APP006",
            )
        diff: dict[str, Any] = {
            name: {"from": before[name], "to": after[name]}
            for name in SETTINGS
            if before[name] != after[name]
        }
        added = [s.name for s in wanted if s.id not in placed]
        if added:
            diff["servers"] = {"add": added}
        if not diff:
            raise InvalidInput(f"{app.name} already has these settings; nothing to change")
        return Proposal(
            kind="change",
            summary=f"Update {app.name}: {', '.join(diff)}",
            preview={
                "action": "update_app",
                "app": app.name,
                "changes": diff,
                "next": "Settings take effect at the next deploy (deploy_app).",
            },
            params={
                "app_id": str(app.id),
                "fields": data.model_dump(mode="json", exclude_none=True),
            },
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        data = AppPatch.model_validate(params["fields"])
        async with scoped(actor.org_id):
            app = await App.get_or_none(id=params["app_id"])
            if app is None:
                raise NotFound("the app of this plan no longer exists", code="APP001")
            apply_fields(app, data)
            await check_domains_free(app)
            await app.save()
            if data.servers is not None:
                placed = {p.server_id for p in await AppServer.filter(app_id=app.id)}
                for server in await servers_by_ref(data.servers):
                    if server.id not in placed:
                        await AppServer.create(app_id=app.id, server_id=server.id)
        return Outcome(True, {"app": {"id": str(app.id), "name": app.name}}, "app updated")


class DeleteApp:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        ref = args.get("app")
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("name the app to delete", code="VAL001")
        async with scoped(actor.org_id):
            app = await find_app(ref)
            placed = bool(await AppServer.filter(app_id=app.id).exists())
        servers: list[dict[str, Any]] = []
        for _, server, live in await placements_of(actor.org_id, app) if placed else []:
            doc = await preview_document(cp, actor.org_id, server, app.id, None)
            servers.append(
                {
                    "server": server.name,
                    "connected": cp.hub.connected(server),
                    "live": release_view(live),
                    "desired_state": doc,
                    "commands": [apply_command(server, doc)],
                }
            )
        return Proposal(
            kind="destructive",
            summary=f"Delete app {app.name}"
            + (f" and stop it on {', '.join(s['server'] for s in servers)}" if servers else ""),
            preview={
                "action": "delete_app",
                "app": app.name,
                "servers": servers,
                "effects": [
                    "the app stops on every server and its proxy configuration is removed",
                    "its settings, environment, deployments and logs are deleted",
                    "its domains stop answering",
                ],
            },
            params={"app_id": str(app.id)},
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        async with scoped(actor.org_id):
            app = await App.get_or_none(id=params["app_id"])
        if app is None:
            raise NotFound("the app of this plan no longer exists", code="APP001")
        await cp.deployer.remove(actor.org_id, app, actor.name)
        async with scoped(actor.org_id):
            await app.delete()
        return Outcome(True, {"deleted": {"app": app.name, "id": str(app.id)}}, "app deleted")
