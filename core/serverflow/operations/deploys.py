"""Plannable deploys, rollbacks and restarts of an app (kind `change`)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field, field_validator

from serverflow.agents.registry import KINDS_ALLOWED, inventory_entry
from serverflow.apps import follow_branch, naming_rule
from serverflow.controlplane import ControlPlane
from serverflow.deploys.desired import APPLY_ACTION, RESOLVE_ACTION, app_entry, release_id
from serverflow.deploys.service import Deployer, decrypt_env
from serverflow.errors import AgentUnavailable, Conflict, InvalidInput, NotFound
from serverflow.models import (
    App,
    AppServer,
    CommandStatus,
    Deployment,
    SecurityMode,
    Server,
)
from serverflow.operations.actions import run_checked
from serverflow.operations.documents import apply_command, preview_document, release_view
from serverflow.operations.operation import (
    Actor,
    Kind,
    Outcome,
    Proposal,
    find_app,
    masked,
    validated,
)
from serverflow.schemas import Input
from serverflow.tenancy import scoped
from serverflow_contract import naming

RESOLVE_TIMEOUT_S = 30.0


class DeployArgs(Input):
    app: str = Field(min_length=1, max_length=100)
    branch: str | None = Field(default=None, max_length=naming.BRANCH_MAX)
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        return naming_rule(naming.check_branch, value)


class RollbackArgs(Input):
    app: str = Field(min_length=1, max_length=100)
    release: str | None = Field(default=None, pattern=r"^r[0-9]+-[0-9a-f]{7}$")


class AppArgs(Input):
    app: str = Field(min_length=1, max_length=100)


def agent_warnings(cp: ControlPlane, server: Server, action: str) -> list[str]:
    """Why `action` could not run on `server` right now (empty: it can)."""
    warnings = []
    if not cp.hub.connected(server):
        warnings.append(f"the agent of {server.name} is not connected ({server.status})")
    spec = inventory_entry(server, action)
    if spec is None and server.inventory is not None:
        warnings.append(f"the agent of {server.name} has no action {action}")
    elif spec is not None and spec["kind"] not in KINDS_ALLOWED[SecurityMode(server.security_mode)]:
        warnings.append(f"{server.name} is in {server.security_mode} mode: {action} is not allowed")
    return warnings


async def placements_of(org_id: Any, app: App) -> list[tuple[AppServer, Server, Deployment | None]]:
    async with scoped(org_id):
        placements = list(await AppServer.filter(app_id=app.id))
        if not placements:
            raise Conflict(
                f"{app.name} is not placed on any server (update_app can add servers)",
                code="APP003",
            )
        servers = {s.id: s for s in await Server.filter(id__in=[p.server_id for p in placements])}
        live_ids = [p.live_deployment_id for p in placements if p.live_deployment_id]
        live = {d.id: d for d in await Deployment.filter(id__in=live_ids)} if live_ids else {}
    return [
        (
            p,
            servers[p.server_id],
            live.get(p.live_deployment_id) if p.live_deployment_id else None,
        )
        for p in sorted(placements, key=lambda p: servers[p.server_id].name)
    ]


async def _next_number(org_id: Any, app: App, server: Server) -> int:
    async with scoped(org_id):
        last = (
            await Deployment.filter(app_id=app.id, server_id=server.id).order_by("-number").first()
        )
    return (last.number if last else 0) + 1


def resolve_params(app: App, branch: str | None) -> dict[str, Any]:
    """git.resolve's parameters: without a branch, the repository's default branch."""
    return {"repo": app.repo_url, **({"branch": branch} if branch else {})}


async def _resolve(
    cp: ControlPlane, actor: Actor, app: App, branch: str | None, servers: list[Server]
) -> tuple[str | None, str | None, str]:
    """The commit `branch` (default: the repository's default branch) points to, and the
    branch, asked of the first connected agent that can tell."""
    asked = branch or "the default branch"
    for server in servers:
        if cp.hub.connected(server) and inventory_entry(server, RESOLVE_ACTION):
            try:
                command = await cp.hub.run(
                    actor.org_id,
                    server,
                    RESOLVE_ACTION,
                    "read",
                    resolve_params(app, branch),
                    actor.name,
                    RESOLVE_TIMEOUT_S,
                )
            except AgentUnavailable:  # it went away just now: try the next one
                continue
            output = command.output if isinstance(command.output, dict) else {}
            if command.status == CommandStatus.OK and output.get("commit"):
                found = str(output.get("branch") or branch or "")
                shown = found if branch else f"{found} (the default branch)"
                return str(output["commit"]), found or None, f"{shown} resolved on {server.name}"
            why = (
                f"could not resolve {asked} on {server.name} ({command.code or command.status}: "
                f"{command.message or ''}); the deploy will resolve it again and fail the same "
                "way unless that is fixed"
            )
            return None, branch, why
    return (
        None,
        branch,
        "no connected agent can resolve the branch now; it is resolved when the plan runs",
    )


async def _app_by_id(actor: Actor, app_id: str) -> App:
    async with scoped(actor.org_id):
        app = await App.get_or_none(id=app_id)
    if app is None:
        raise NotFound("the app of this plan no longer exists", code="APP001")
    return app


def _queued(deps: list[Deployment], servers: dict[Any, str]) -> Outcome:
    return Outcome(
        True,
        {
            "deployments": [
                {
                    "id": str(d.id),
                    "server": servers.get(d.server_id, str(d.server_id)),
                    "number": d.number,
                    "kind": d.kind,
                    "status": str(d.status),
                }
                for d in deps
            ],
            "next": "The deployments run in the background: follow them with get_app or "
            "get_app_logs.",
        },
        "deployment started",
    )


class DeployApp:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        data = validated(DeployArgs, args)
        async with scoped(actor.org_id):
            app = await find_app(data.app)
            env = decrypt_env(cp.keys.cipher, app.env_encrypted)
        placed = await placements_of(actor.org_id, app)
        branch = data.branch or app.branch
        commit, resolution = data.commit, "commit given"
        if commit is None:
            servers_placed = [s for _, s, _ in placed]
            commit, branch, resolution = await _resolve(cp, actor, app, branch, servers_placed)
        servers: list[dict[str, Any]] = []
        for _, server, live in placed:
            number = await _next_number(actor.org_id, app, server)
            release = release_id(number, commit) if commit else f"r{number}-<commit>"
            spec = {**Deployer._spec(app), "commit": commit or "<resolved>", "release": release}
            doc = await preview_document(
                cp, actor.org_id, server, app.id, app_entry(spec, masked(env))
            )
            commands = []
            if commit is None:
                commands.append(
                    {
                        "server": server.name,
                        "action": RESOLVE_ACTION,
                        "kind": "read",
                        "params": resolve_params(app, branch),
                    }
                )
            commands.append(apply_command(server, doc))
            servers.append(
                {
                    "server": server.name,
                    "connected": cp.hub.connected(server),
                    "current": release_view(live),
                    "target": {"branch": branch, "commit": commit, "release": release},
                    "same_commit_as_live": bool(live and commit and live.commit_sha == commit),
                    "desired_state": doc,
                    "commands": commands,
                    "warnings": agent_warnings(cp, server, APPLY_ACTION),
                }
            )
        shown = branch or "the default branch"
        target = f"{shown} @ {commit[:7]}" if commit else shown
        names = ", ".join(s["server"] for s in servers)
        follows = data.branch is not None and data.branch != app.branch
        return Proposal(
            kind="change",
            summary=f"Deploy {app.name} ({target}) to {names}",
            preview={
                "action": "deploy_app",
                "app": app.name,
                "repo": app.repo_url,
                "resolution": resolution,
                "servers": servers,
                "health_check": {"path": app.health_path, "timeout_s": app.health_timeout_s},
                "safety": "Each server builds and health-checks the new release before "
                "switching traffic; if it fails, the current release keeps serving.",
                **({"follows": f"{app.name} follows {data.branch} from now on"} if follows else {}),
            },
            params={
                "app_id": str(app.id),
                "branch": branch,
                "commit": commit,
                "follow": data.branch if follows else None,
            },
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        app = await _app_by_id(actor, params["app_id"])
        placed = await placements_of(actor.org_id, app)
        deps = await cp.deployer.deploy(
            actor.org_id, app, actor.name, commit=params["commit"], branch=params["branch"]
        )
        if params.get("follow"):
            await follow_branch(actor.org_id, app, params["follow"], actor.name)
        return _queued(deps, {s.id: s.name for _, s, _ in placed})


class RollbackApp:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        data = validated(RollbackArgs, args)
        async with scoped(actor.org_id):
            app = await find_app(data.app)
        servers: list[dict[str, Any]] = []
        releases: set[str | None] = set()
        for placement, server, live in await placements_of(actor.org_id, app):
            async with scoped(actor.org_id):
                # The deployer's own choice of release, so the preview cannot disagree.
                target = await cp.deployer._rollback_target(app, placement, data.release)
            releases.add(target.release)
            env = masked(decrypt_env(cp.keys.cipher, target.env_encrypted))
            doc = await preview_document(
                cp, actor.org_id, server, app.id, app_entry(target.spec or {}, env)
            )
            servers.append(
                {
                    "server": server.name,
                    "connected": cp.hub.connected(server),
                    "current": release_view(live),
                    "target": release_view(target),
                    "desired_state": doc,
                    "commands": [apply_command(server, doc)],
                    "warnings": agent_warnings(cp, server, APPLY_ACTION),
                }
            )
        # Pin the release previewed, so a deploy in between cannot change what runs.
        pinned = data.release or (releases.pop() if len(releases) == 1 else None)
        shown = ", ".join(f"{s['server']} → {s['target']['release']}" for s in servers)
        return Proposal(
            kind="change",
            summary=f"Roll back {app.name}: {shown}",
            preview={
                "action": "rollback_app",
                "app": app.name,
                "servers": servers,
                "safety": "The earlier release is reused as built (no rebuild) and "
                "health-checked before traffic switches to it.",
            },
            params={"app_id": str(app.id), "release": pinned},
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        app = await _app_by_id(actor, params["app_id"])
        placed = await placements_of(actor.org_id, app)
        deps = await cp.deployer.rollback(actor.org_id, app, actor.name, params["release"])
        return _queued(deps, {s.id: s.name for _, s, _ in placed})


class RestartApp:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        data = validated(AppArgs, args)
        async with scoped(actor.org_id):
            app = await find_app(data.app)
        runtime = cp.plugins.runtimes.get(app.runtime)
        if runtime is None:
            raise InvalidInput(
                f"{app.name} uses the runtime {app.runtime!r}, which no plugin provides now",
                code="APP002",
            )
        targets, skipped, kinds = [], [], {"change"}
        for _, server, live in await placements_of(actor.org_id, app):
            if live is None or not live.release:
                skipped.append(f"{server.name}: no live release")
                continue
            call = runtime.restart(app.name, live.release)
            spec = inventory_entry(server, call.action)
            if spec is not None:
                kinds.add(spec["kind"])
            targets.append(
                {
                    "server": server.name,
                    "server_id": str(server.id),
                    "release": live.release,
                    "action": call.action,
                    "kind": spec["kind"] if spec else "change",
                    "params": dict(call.params),
                    "warnings": agent_warnings(cp, server, call.action),
                }
            )
        if not targets:
            raise Conflict(
                f"{app.name} has no live release to restart ({'; '.join(skipped)}); "
                "deploy it first",
                code="MCP003",
            )
        kind: Kind = "destructive" if "destructive" in kinds else "change"
        shown = ", ".join(f"{t['server']} ({t['release']})" for t in targets)
        return Proposal(
            kind=kind,
            summary=f"Restart {app.name} on {shown}",
            preview={
                "action": "restart_app",
                "app": app.name,
                "runtime": app.runtime,
                "commands": [
                    {k: t[k] for k in ("server", "action", "kind", "params", "warnings")}
                    for t in targets
                ],
                "skipped": skipped,
            },
            params={
                "app_id": str(app.id),
                "targets": [
                    {k: t[k] for k in ("server_id", "action", "kind", "params")} for t in targets
                ],
            },
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        await _app_by_id(actor, params["app_id"])
        runs = [
            run_checked(cp, actor, t["server_id"], t["action"], t["kind"], t["params"])
            for t in params["targets"]
        ]
        results = await asyncio.gather(*runs)
        failed = [r for r in results if r["status"] != CommandStatus.OK]
        return Outcome(
            not failed,
            {"commands": results},
            "restarted" if not failed else f"{len(failed)} of {len(results)} restarts failed",
            None if not failed else "MCP002",
        )
