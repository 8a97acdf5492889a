"""The MCP tools. Each docstring is the description the assistant reads: keep them exact.

Tools run inside the server's boundary (`server.py`): the caller's token is known, the
Quart app context is active, errors become tool errors with stable codes, and every call
is audited.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp_types import ToolAnnotations
from pydantic import Field

from serverflow import plans
from serverflow.controlplane import current
from serverflow.errors import ServerFlowError
from serverflow.mcp import reads
from serverflow.mcp.caller import caller
from serverflow.models import ApiToken, Plan, PlanStatus
from serverflow.operations import actions
from serverflow.operations.operation import Actor
from serverflow.tenancy import scoped

AppRef = Annotated[
    str,
    Field(min_length=1, max_length=100, description="The app's name (or id), as list_apps shows."),
]
ServerRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        description="The server's name (or id), as list_servers shows.",
    ),
]
PlanId = Annotated[str, Field(max_length=100, description="The plan_id a dry run returned.")]
Branch = Annotated[
    str | None,
    Field(max_length=255, description="Git branch (default: the app's branch)."),
]


def _actor() -> Actor:
    principal = caller()
    return Actor(principal.org_id, principal.role, principal.label)


async def _may_apply() -> bool:
    principal = caller()
    async with scoped(principal.org_id):
        token = await ApiToken.get_or_none(id=principal.token_id)
    return bool(token and token.allow_apply)


def _next_step(plan: Plan, may_apply: bool) -> str:
    until = f"before it expires at {plan.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    person = (
        f"a person must confirm it in the ServerFlow dashboard or with "
        f"`serverflow plans confirm {plan.id}`"
    )
    if plan.status != PlanStatus.PENDING:
        return f"This plan is {plan.status}; nothing more can happen with it."
    if plan.kind == "destructive":
        return (
            f"Nothing has changed. This is destructive, so you cannot apply it: {person} "
            f"{until}. Show the user the summary and plan id, then poll get_plan to see it run."
        )
    if may_apply:
        return (
            f"Nothing has changed. Show the user what this plan does; to make the change call "
            f"apply_plan with plan_id {plan.id} {until}."
        )
    return (
        f"Nothing has changed, and this token may not apply plans: {person} {until} "
        "(or the user can give the assistant a token created with --allow-apply)."
    )


async def _plan(tool: str, args: dict[str, Any]) -> dict[str, Any]:
    plan = await plans.propose(current(), caller(), tool, args)
    return {
        "dry_run": True,
        "plan_id": str(plan.id),
        "summary": plan.summary,
        "kind": plan.kind,
        "expires_at": plan.expires_at.isoformat(),
        "preview": plan.preview,
        "next_step": _next_step(plan, await _may_apply()),
    }


# -- read ------------------------------------------------------------------------------


async def list_servers() -> dict[str, Any]:
    """List the servers of your organisation: status (online, offline, pending), whether the
    agent is connected now, when it was last seen, security mode, host name, agent version
    and the latest metrics it reported (CPU, memory, disk, load)."""
    return await reads.list_servers(current(), caller().org_id)


async def get_server(server: ServerRef) -> dict[str, Any]:
    """Details of one server: status and metrics, the apps placed on it with their live
    release, the actions its agent offers (by kind), recent events and recent commands."""
    return await reads.get_server(current(), caller().org_id, server)


async def list_actions(server: ServerRef) -> dict[str, Any]:
    """The actions a server's agent may run (its signed registry, filtered by the server's
    security mode), each with its kind (read, change, destructive), description and the JSON
    schema of its parameters. Use before run_action."""
    return await reads.list_actions(caller().org_id, server)


async def list_apps() -> dict[str, Any]:
    """List the apps of your organisation: repository, branch, runtime, domains, and for each
    server it is placed on the live release (release id, commit) and the server's status."""
    return await reads.list_apps(current(), caller().org_id)


async def get_app(app: AppRef) -> dict[str, Any]:
    """One app: settings (environment values masked), the live release on each server, and
    its 10 most recent deployments with status, commit, release, reason and timing."""
    return await reads.get_app(current(), caller().org_id, app)


async def get_app_logs(
    app: AppRef,
    deployment_id: Annotated[
        str | None, Field(description="A deployment id (default: the latest).")
    ] = None,
    server: Annotated[
        str | None, Field(description="Only this server's latest deployment.")
    ] = None,
    lines: Annotated[int, Field(ge=1, le=1000, description="How many last lines.")] = 200,
) -> dict[str, Any]:
    """The log of a deployment of the app (the latest one unless deployment_id is given):
    build, health check and proxy steps as the server's agent reported them, last lines
    first cut (at most 1000)."""
    return await reads.get_app_logs(caller().org_id, app, deployment_id, server, lines)


async def get_app_output(
    app: AppRef,
    lines: Annotated[int, Field(ge=1, le=1000, description="How many last lines.")] = 200,
) -> dict[str, Any]:
    """What the app itself prints (stdout and stderr of its web and other Procfile
    processes) on its servers, the last lines merged in time order, each with its server,
    process type, release and stream. Deploy steps are in get_app_logs."""
    principal = caller()
    return await reads.get_app_output(current(), principal.org_id, principal.label, app, lines)


# -- change (dry run first) -----------------------------------------------------------------


async def create_app(
    name: Annotated[str, Field(description="New app name: a-z, 0-9, '-', at most 63.")],
    repo: Annotated[str, Field(description="Git URL (https://, ssh://, git@host:) or a path.")],
    servers: Annotated[list[str], Field(description="Names of the servers to place it on.")],
    branch: Branch = None,
    build: Annotated[
        list[str] | None,
        Field(description="Build steps, one command each, no shell syntax."),
    ] = None,
    start: Annotated[str | None, Field(description="Start command (default: detected).")] = None,
    port: Annotated[int | None, Field(description="Fixed port (default: one per release).")] = None,
    env: Annotated[dict[str, str] | None, Field(description="Environment variables.")] = None,
    domains: Annotated[list[str] | None, Field(description="Domains.")] = None,
    tls: Annotated[bool | None, Field(description="HTTPS (default true).")] = None,
    health_path: Annotated[str | None, Field(description="Health check path (default /).")] = None,
    runtime: Annotated[str | None, Field(description="Runtime plugin (default pm2).")] = None,
) -> dict[str, Any]:
    """Plan a new app (a DRY RUN: nothing is created yet). Returns what would be created and a
    plan_id; apply it with apply_plan (if allowed) or have a person confirm it. Creating an
    app deploys nothing: deploy it afterwards with deploy_app."""
    return await _plan(
        "create_app",
        {
            "name": name,
            "repo": repo,
            "servers": servers,
            "branch": branch,
            "build": build,
            "start": start,
            "port": port,
            "env": env,
            "domains": domains,
            "tls": tls,
            "health_path": health_path,
            "runtime": runtime,
        },
    )


async def update_app(
    app: AppRef,
    repo: Annotated[str | None, Field(description="New git URL.")] = None,
    branch: Branch = None,
    build: Annotated[list[str] | None, Field(description="Build steps.")] = None,
    start: Annotated[str | None, Field(description="Start command.")] = None,
    port: Annotated[int | None, Field(description="Fixed port.")] = None,
    domains: Annotated[list[str] | None, Field(description="The full list of domains.")] = None,
    tls: Annotated[bool | None, Field(description="HTTPS on or off.")] = None,
    health_path: Annotated[str | None, Field(description="Health path.")] = None,
    health_timeout_s: Annotated[
        int | None, Field(description="Health check timeout, seconds.")
    ] = None,
    runtime: Annotated[str | None, Field(description="Runtime plugin.")] = None,
    keep_releases: Annotated[
        int | None, Field(description="Releases kept for rollbacks (2 to 50).")
    ] = None,
    servers: Annotated[
        list[str] | None,
        Field(description="Servers it should be on (adding only)."),
    ] = None,
) -> dict[str, Any]:
    """Plan a change of an app's settings (a DRY RUN: shows each setting before and after,
    and a plan_id). Only the settings given change (build [] detects the build again). They
    take effect at the next deploy."""
    return await _plan(
        "update_app",
        {
            "app": app,
            "repo": repo,
            "branch": branch,
            "build": build,
            "start": start,
            "port": port,
            "domains": domains,
            "tls": tls,
            "health_path": health_path,
            "health_timeout_s": health_timeout_s,
            "runtime": runtime,
            "keep_releases": keep_releases,
            "servers": servers,
        },
    )


async def deploy_app(
    app: AppRef,
    branch: Branch = None,
    commit: Annotated[str | None, Field(description="An exact 40-hex commit to deploy.")] = None,
) -> dict[str, Any]:
    """Plan a deploy of an app to all its servers (a DRY RUN: nothing changes). Shows, per
    server, the live release and commit against the target commit (the branch is resolved on
    the server now), the desired-state document that would be signed (environment values
    masked) and the agent commands; returns a plan_id for apply_plan."""
    return await _plan("deploy_app", {"app": app, "branch": branch, "commit": commit})


async def rollback_app(
    app: AppRef,
    release: Annotated[
        str | None,
        Field(description="A release id like r3-1a2b3c4 (default: the previous)."),
    ] = None,
) -> dict[str, Any]:
    """Plan a rollback of an app to an earlier release (a DRY RUN): per server, the live
    release and the one that would come back (reused as built). Returns a plan_id."""
    return await _plan("rollback_app", {"app": app, "release": release})


async def restart_app(app: AppRef) -> dict[str, Any]:
    """Plan a restart of an app's live release on each of its servers (a DRY RUN): shows the
    runtime commands that would be signed. Returns a plan_id."""
    return await _plan("restart_app", {"app": app})


async def run_action(
    server: ServerRef,
    action: Annotated[str, Field(max_length=100, description="An action name from list_actions.")],
    params: Annotated[
        dict[str, Any] | None,
        Field(description="Parameters matching the action's params_schema."),
    ] = None,
) -> dict[str, Any]:
    """Run an action of a server's signed registry (see list_actions). A read action runs at
    once and returns its signed result. A change action returns a DRY RUN and a plan_id; a
    destructive one returns a plan only a person can confirm."""
    args = {"server": server, "action": action, "params": params or {}}
    _, _, spec = await actions.spec_for(_actor(), args)
    if spec["kind"] == "read":
        result = await actions.run_read(current(), _actor(), args)
        if result["status"] != "ok":
            raise ServerFlowError(
                f"{action} on {result['server']} ended {result['status']}: "
                f"{result['code'] or ''} {result['message'] or ''}".strip(),
                code="MCP002",
                details={"command": result},
            )
        return result
    return await _plan("run_action", args)


# -- destructive (a person confirms) -----------------------------------------------------


async def delete_app(app: AppRef) -> dict[str, Any]:
    """Plan deleting an app (DESTRUCTIVE: stops it on every server, removes its proxy
    configuration, deletes its settings and history). You cannot apply it: a person must
    confirm the plan; poll get_plan for its status."""
    return await _plan("delete_app", {"app": app})


async def delete_server(server: ServerRef) -> dict[str, Any]:
    """Plan deleting a server (DESTRUCTIVE: forgets the server and its agent's key; apps on it
    lose that placement). You cannot apply it: a person must confirm the plan; poll get_plan."""
    return await _plan("delete_server", {"server": server})


# -- plans ------------------------------------------------------------------------------------


async def get_plan(plan_id: PlanId) -> dict[str, Any]:
    """A plan's status (pending, confirmed, applied, failed, rejected, expired), what it does,
    who decided it and, once it ran, its result. Use it to poll a plan waiting for a person."""
    plan = await plans.get(caller().org_id, plan_id)
    return {**plans.view(plan), "next_step": _next_step(plan, await _may_apply())}


async def list_plans(
    status: Annotated[
        Literal["pending", "confirmed", "applied", "failed", "rejected", "expired"] | None,
        Field(description="Only plans with this status."),
    ] = None,
) -> dict[str, Any]:
    """The organisation's most recent plans (50), newest first, with status and summary."""
    rows = await plans.listing(caller().org_id, status)
    return {
        "plans": [
            {k: v for k, v in plans.view(p).items() if k not in ("preview", "result")} for p in rows
        ]
    }


async def apply_plan(plan_id: PlanId) -> dict[str, Any]:
    """Apply a change plan from a dry run. Works only if this token may apply plans
    (allow_apply), only once, and only before the plan expires; destructive plans are never
    applied by an assistant (a person confirms them). Returns what was done."""
    plan, outcome = await plans.apply(current(), caller(), plan_id)
    if not outcome.ok:
        raise ServerFlowError(
            f"plan {plan.id} ran and failed: {outcome.message}",
            code=outcome.code or "MCP002",
            details={"plan": plans.view(plan)},
        )
    return {"applied": True, "plan": plans.view(plan), "result": outcome.result}


READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
PLANS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)

TOOLS: list[tuple[Any, ToolAnnotations]] = [
    (list_servers, READ),
    (get_server, READ),
    (list_actions, READ),
    (list_apps, READ),
    (get_app, READ),
    (get_app_logs, READ),
    (get_app_output, READ),
    (get_plan, READ),
    (list_plans, READ),
    (create_app, PLANS),
    (update_app, PLANS),
    (deploy_app, PLANS),
    (rollback_app, PLANS),
    (restart_app, PLANS),
    (run_action, PLANS),
    (apply_plan, PLANS),
    (delete_app, DESTRUCTIVE),
    (delete_server, DESTRUCTIVE),
]
