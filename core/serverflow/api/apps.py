"""Apps, their deployments and logs, rollbacks, and git push webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from quart import Response, request
from quart_schema import (
    document_response,
    hide,
    validate_querystring,
    validate_request,
    validate_response,
)

from serverflow import audit, runtime_logs
from serverflow.api import bp
from serverflow.api.openapi import answers
from serverflow.api.schemas import ErrorOut, Input, Output, parse_id
from serverflow.apps import (
    AppIn,
    AppPatch,
    FormationIn,
    apply_fields,
    check_domains_free,
    follow_branch,
    naming_rule,
    new_app,
    save_new_app,
    scaled,
    servers_by_ref,
)
from serverflow.auth import actor, principal, requires
from serverflow.controlplane import current
from serverflow.deploys.addresses import app_url
from serverflow.deploys.service import decrypt_env, encrypt_env, is_final
from serverflow.deploys.webhooks import (
    WebhookError,
    github_push,
    gitlab_push,
    hook_urls,
)
from serverflow.errors import InvalidInput, NotFound
from serverflow.models import (
    App,
    AppServer,
    Deployment,
    DeploymentLog,
    Role,
    Server,
)
from serverflow.tenancy import scoped
from serverflow_contract import naming

MASK = "********"


class EnvIn(Input):
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)

    @field_validator("set")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        return naming.check_env(value)


class AppOut(Output):
    id: uuid.UUID
    name: str
    repo: str
    branch: str | None = Field(description="null: the repository's default branch.")
    default_branch: str | None = Field(
        description="The repository's default branch, as the last deploy of it found it."
    )
    build: list[list[str]] | None
    start: list[str] | None
    port: int | None
    env: dict[str, str] = Field(description="Values masked; set them with PUT .../env.")
    health_path: str
    health_timeout_s: int
    domains: list[str]
    tls: bool
    runtime: str
    keep_releases: int
    formation: dict[str, int] = Field(
        description="Processes per Procfile type other than web; a type not named runs 1."
    )
    url: str | None = Field(
        description="Where the app is reached: its first domain (https with TLS), else "
        "http://<server address>:<public port> on its first server; null until a release "
        "of an app without a domain is live (or the server's address is unknown)."
    )
    servers: list[dict[str, Any]] = Field(
        description="Each server it is placed on: id, name, live_deployment_id, public_port "
        "(its stable port there, for an app without a domain) and url (the app's URL there)."
    )
    created_at: datetime
    updated_at: datetime


class AppList(Output):
    apps: list[AppOut]


class DeploymentOut(Output):
    id: uuid.UUID
    app_id: uuid.UUID
    server_id: uuid.UUID
    number: int
    kind: str = Field(description="deploy, rollback, or config (new env or formation).")
    branch: str | None
    commit_sha: str | None
    release: str | None
    triggered_by: str
    status: str
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None


class DeploymentList(Output):
    deployments: list[DeploymentOut]


class AppChanged(AppOut):
    deployments: list[DeploymentOut] = Field(
        default_factory=list,
        description="The config deployments that put the change live, one per server where "
        "the app is live (none: it applies at the next deploy).",
    )


class DeployIn(Input):
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    branch: str | None = Field(default=None, max_length=naming.BRANCH_MAX)

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        return naming_rule(naming.check_branch, value)


class RollbackIn(Input):
    release: str | None = Field(default=None, pattern=r"^r[0-9]+-[0-9a-f]{7}$")


class LogLine(Output):
    seq: int
    at: datetime
    stage: str
    line: str


class LogList(Output):
    deployment: DeploymentOut
    lines: list[LogLine]


# One event of a followed log: a "log" event per line, then the deployment's "status".
LOG_EVENT = {
    "type": "object",
    "properties": {
        "event": {"enum": ["log", "status"]},
        "id": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/LogLine"},
                    {"$ref": "#/components/schemas/DeploymentOut"},
                ]
            },
        },
    },
    "required": ["event", "data"],
}


class LogQuery(BaseModel):
    follow: bool = False
    # DeploymentLog.seq is a 32-bit column: a larger number is no line, and no database
    # takes it as a parameter (SQLite overflows, PostgreSQL refuses it for an int4).
    after: int = Field(default=0, ge=0, le=2**31 - 1)


class AppLogLine(Output):
    server: str
    type: str = Field(description="The Procfile process type: web, worker...")
    index: int = Field(description="Which process of its type (worker.2 is 2).")
    release: str
    stream: Literal["out", "err"]
    line: str
    at: datetime | None = Field(description="When it was printed, if the runtime says.")


class LogNotice(Output):
    server: str | None
    code: str | None = Field(description="An error code (AGT001: the agent is offline...).")
    message: str


class AppLogs(Output):
    app: str
    lines: list[AppLogLine]
    problems: list[LogNotice] = Field(
        description="The servers whose lines are missing, and why (others answered)."
    )


# One event of a followed app log: a "log" event per line, a "notice" when a server's
# agent went away or came back, or lines were dropped.
APP_LOG_EVENT = {
    "type": "object",
    "properties": {
        "event": {"enum": ["log", "notice"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/AppLogLine"},
                    {"$ref": "#/components/schemas/LogNotice"},
                ]
            },
        },
    },
    "required": ["event", "data"],
}


class AppLogQuery(BaseModel):
    lines: int = Field(default=100, ge=1, le=1000)
    follow: bool = False


class WebhookOut(BaseModel):
    github_url: str
    gitlab_url: str
    secret: str


async def get_app(app_id: str) -> App:
    try:
        app = await App.get_or_none(id=uuid.UUID(app_id))
    except ValueError:
        app = await App.get_or_none(name=app_id)
    if app is None:
        raise NotFound(f"app {app_id!r} not found", code="APP001")
    return app


async def _out(app: App) -> AppOut:
    cp = current()
    placements = await AppServer.filter(app_id=app.id)
    servers = {s.id: s for s in await Server.filter(id__in=[p.server_id for p in placements])}
    placements = sorted(placements, key=lambda p: servers[p.server_id].name)
    urls = [app_url(app, p, servers[p.server_id]) for p in placements]
    env = decrypt_env(cp.keys.cipher, app.env_encrypted)
    return AppOut(
        id=app.id,
        name=app.name,
        repo=app.repo_url,
        branch=app.branch,
        default_branch=app.default_branch,
        build=app.build_commands,
        start=app.start_command,
        port=app.port,
        env={k: MASK for k in env},
        health_path=app.health_path,
        health_timeout_s=app.health_timeout_s,
        domains=list(app.domains or []),
        tls=app.tls,
        runtime=app.runtime,
        keep_releases=app.keep_releases,
        formation=dict(app.formation or {}),
        url=next((u for u in urls if u), None),
        servers=[
            {
                "id": str(p.server_id),
                "name": servers[p.server_id].name,
                "live_deployment_id": str(p.live_deployment_id) if p.live_deployment_id else None,
                "public_port": p.public_port,
                "url": url,
            }
            for p, url in zip(placements, urls, strict=True)
        ],
        created_at=app.created_at,
        updated_at=app.updated_at,
    )


@bp.get("/apps")
@requires(Role.VIEWER)
@validate_response(AppList)
async def list_apps() -> AppList:
    return AppList(apps=[await _out(a) for a in await App.all().order_by("name")])


@bp.post("/apps")
@requires(Role.MEMBER)
@validate_request(AppIn)
@validate_response(AppOut, 201)
@validate_response(ErrorOut, 404)  # a server it names
@validate_response(ErrorOut, 409)
async def create_app_(data: AppIn) -> tuple[AppOut, int]:
    """Create an app on one or more servers (nothing is deployed until you deploy)."""
    cp = current()
    app, servers = await new_app(cp, data)
    await save_new_app(cp, app, servers)
    return await _out(app), 201


@bp.get("/apps/<app_id>")
@requires(Role.VIEWER)
@validate_response(AppOut)
@validate_response(ErrorOut, 404)
async def read_app(app_id: str) -> AppOut:
    return await _out(await get_app(app_id))


@bp.patch("/apps/<app_id>")
@requires(Role.MEMBER)
@validate_request(AppPatch)
@validate_response(AppOut)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)  # a domain another app has
async def update_app(app_id: str, data: AppPatch) -> AppOut:
    """Change settings; they take effect at the next deploy."""
    app = await get_app(app_id)
    apply_fields(app, data)
    await check_domains_free(app)
    await app.save()
    if data.servers is not None:
        wanted = {s.id for s in await servers_by_ref(data.servers)}
        placed = {p.server_id for p in await AppServer.filter(app_id=app.id)}
        for server_id in wanted - placed:
            await AppServer.create(app_id=app.id, server_id=server_id)
        if placed - wanted:
            raise InvalidInput(
                "removing an app from a server is not supported yet; delete and recreate the app",
                code="APP006",
            )
    return await _out(app)


async def _config_release(app: App) -> AppChanged:
    """Put an env or formation change live: a config deployment where the app is live."""
    caller = principal()
    deps = await current().deployer.config(caller.org_id, app, caller.label)
    async with scoped(caller.org_id):
        out = await _out(app)
    return AppChanged(
        **out.model_dump(), deployments=[DeploymentOut.model_validate(d) for d in deps]
    )


@bp.put("/apps/<app_id>/env")
@requires(Role.MEMBER, atomic=False)
@validate_request(EnvIn)
@validate_response(AppChanged)
@validate_response(ErrorOut, 404)
async def set_env(app_id: str, data: EnvIn) -> AppChanged:
    """Set or unset environment variables (encrypted at rest). Where the app is live, a
    config release of the live commit (its build reused) puts them live at once."""
    caller = principal()
    cipher = current().keys.cipher
    async with scoped(caller.org_id):
        app = await get_app(app_id)
        env = decrypt_env(cipher, app.env_encrypted)
        env.update(data.set)
        for key in data.unset:
            env.pop(key, None)
        app.env_encrypted = encrypt_env(cipher, env)
        await app.save(update_fields=["env_encrypted", "updated_at"])
    return await _config_release(app)


@bp.put("/apps/<app_id>/formation")
@requires(Role.MEMBER, atomic=False)
@validate_request(FormationIn)
@validate_response(AppChanged)
@validate_response(ErrorOut, 404)
async def scale_app(app_id: str, data: FormationIn) -> AppChanged:
    """Scale Procfile process types other than web (0 to 20 each); where the app is live,
    a config release of the live commit applies it at once."""
    caller = principal()
    async with scoped(caller.org_id):
        app = await get_app(app_id)
        app.formation = scaled(app, data.scale)
        await app.save(update_fields=["formation", "updated_at"])
    return await _config_release(app)


@bp.delete("/apps/<app_id>")
@requires(Role.ADMIN, atomic=False)
@answers(204, "The app was removed from its servers and deleted.")
@validate_response(ErrorOut, 404)
async def delete_app(app_id: str) -> tuple[str, int]:
    """Stop the app on its servers, remove its proxy configuration, then forget it."""
    caller = principal()
    async with scoped(caller.org_id):
        app = await get_app(app_id)
    await current().deployer.remove(caller.org_id, app, caller.label)
    async with scoped(caller.org_id):
        await app.delete()
    return "", 204


@bp.post("/apps/<app_id>/deploy")
@requires(Role.MEMBER, atomic=False)
@validate_request(DeployIn)
@validate_response(DeploymentList, 202)
@validate_response(ErrorOut, 409)  # placed on no server
async def deploy_app(app_id: str, data: DeployIn) -> tuple[DeploymentList, int]:
    """Start a deployment on each of the app's servers; follow it with .../logs?follow=true.
    With a branch, the app follows that branch from now on."""
    caller = principal()
    async with scoped(caller.org_id):
        app = await get_app(app_id)
    deps = await current().deployer.deploy(
        caller.org_id, app, caller.label, commit=data.commit, branch=data.branch
    )
    if data.branch is not None:
        await follow_branch(caller.org_id, app, data.branch, actor(caller))
    return DeploymentList(deployments=[DeploymentOut.model_validate(d) for d in deps]), 202


@bp.post("/apps/<app_id>/rollback")
@requires(Role.MEMBER, atomic=False)
@validate_request(RollbackIn)
@validate_response(DeploymentList, 202)
@validate_response(ErrorOut, 409)  # no earlier release
async def rollback_app(app_id: str, data: RollbackIn) -> tuple[DeploymentList, int]:
    """Bring back the previous release (or the one named), without rebuilding it."""
    caller = principal()
    async with scoped(caller.org_id):
        app = await get_app(app_id)
    deps = await current().deployer.rollback(caller.org_id, app, caller.label, data.release)
    return DeploymentList(deployments=[DeploymentOut.model_validate(d) for d in deps]), 202


@bp.get("/apps/<app_id>/deployments")
@requires(Role.VIEWER)
@validate_response(DeploymentList)
async def list_deployments(app_id: str) -> DeploymentList:
    app = await get_app(app_id)
    rows = await Deployment.filter(app_id=app.id).order_by("-created_at").limit(200)
    return DeploymentList(deployments=[DeploymentOut.model_validate(d) for d in rows])


async def get_deployment(deployment_id: str) -> Deployment:
    dep = await Deployment.get_or_none(id=parse_id(deployment_id, "DEP001", "deployment"))
    if dep is None:
        raise NotFound(f"deployment {deployment_id} not found", code="DEP001")
    return dep


@bp.get("/deployments/<deployment_id>")
@requires(Role.VIEWER)
@validate_response(DeploymentOut)
@validate_response(ErrorOut, 404)
async def read_deployment(deployment_id: str) -> DeploymentOut:
    return DeploymentOut.model_validate(await get_deployment(deployment_id))


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


@bp.get("/deployments/<deployment_id>/logs")
@requires(Role.VIEWER, atomic=False)
@validate_querystring(LogQuery)
@document_response(LogList)
@answers(200, "The log; with follow=true, server-sent events", "text/event-stream", LOG_EVENT)
async def deployment_logs(deployment_id: str, query_args: LogQuery) -> Any:
    """The deployment's log; with follow=true, a server-sent event stream until it ends."""
    caller = principal()
    async with scoped(caller.org_id):
        dep = await get_deployment(deployment_id)
        lines = await DeploymentLog.filter(deployment_id=dep.id, seq__gt=query_args.after).order_by(
            "seq"
        )
    if not query_args.follow:
        return LogList(
            deployment=DeploymentOut.model_validate(dep),
            lines=[LogLine.model_validate(line) for line in lines],
        ).model_dump(mode="json")
    cp = current()

    async def stream() -> AsyncIterator[bytes]:
        async with cp.bus.subscribe() as queue:
            last = query_args.after
            for line in lines:
                last = line.seq
                yield _sse("log", LogLine.model_validate(line).model_dump(mode="json"), line.seq)
            async with scoped(caller.org_id):
                fresh = await Deployment.get(id=dep.id)
            while not is_final(fresh.status):
                try:
                    event = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    async with scoped(caller.org_id):
                        fresh = await Deployment.get(id=dep.id)
                    continue
                if event.organization_id != caller.org_id:
                    continue
                if event.data.get("deployment_id") != str(dep.id):
                    continue
                if event.kind == "deployment.log" and event.data["seq"] > last:
                    last = event.data["seq"]
                    yield _sse(
                        "log", {k: event.data[k] for k in ("seq", "at", "stage", "line")}, last
                    )
                elif event.kind == "deployment.finished":
                    break
            async with scoped(caller.org_id):
                fresh = await Deployment.get(id=dep.id)
            yield _sse("status", DeploymentOut.model_validate(fresh).model_dump(mode="json"))

    response = Response(stream(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response


def _app_log_line(line: dict[str, Any]) -> dict[str, Any]:
    at = datetime.fromtimestamp(line["at"] / 1000, UTC) if line["at"] is not None else None
    return AppLogLine.model_validate({**line, "at": at}).model_dump(mode="json")


@bp.get("/apps/<app_id>/logs")
@requires(Role.VIEWER, atomic=False)
@validate_querystring(AppLogQuery)
@document_response(AppLogs)
@answers(200, "The lines; with follow=true, server-sent events", "text/event-stream", APP_LOG_EVENT)
@validate_response(ErrorOut, 409)  # its agents are offline (AGT001), or it is on no server
@validate_response(ErrorOut, 502)  # the agents could not read them (LOG001)
async def app_logs(app_id: str, query_args: AppLogQuery) -> Any:
    """What the app's processes print (stdout and stderr) on its servers, the last lines
    merged in time order; with follow=true, server-sent events as they come, until you
    leave. The deployments' own logs are at /deployments/{id}/logs."""
    caller = principal()
    async with scoped(caller.org_id):
        app = await get_app(app_id)
    cp = current()
    lines = query_args.lines
    start = await runtime_logs.snapshot(cp, caller.org_id, app, caller.label, lines)
    problems = [LogNotice.model_validate(p).model_dump(mode="json") for p in start.problems]
    if not query_args.follow:
        shown = [_app_log_line(line) for line in start.lines]
        return {"app": app.name, "lines": shown, "problems": problems}

    async def stream() -> AsyncIterator[bytes]:
        for line in start.lines:
            yield _sse("log", _app_log_line(line))
        for problem in problems:
            yield _sse("notice", problem)
        events = runtime_logs.follow(cp, caller.org_id, app, caller.label, start, lines)
        async with contextlib.aclosing(events):
            async for event, data in events:
                if event == "log":
                    yield _sse("log", _app_log_line(data))
                elif event == "notice":
                    yield _sse("notice", LogNotice.model_validate(data).model_dump(mode="json"))
                else:
                    yield b": keep-alive\n\n"

    response = Response(stream(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response


@bp.get("/apps/<app_id>/webhook")
@requires(Role.ADMIN)
@validate_response(WebhookOut)
async def webhook_info(app_id: str) -> WebhookOut:
    """Where to point GitHub / GitLab push webhooks, and the secret they must use."""
    app = await get_app(app_id)
    cp = current()
    github, gitlab = hook_urls(cp.settings.base_url, app.organization_id, app.id)
    return WebhookOut(
        github_url=github,
        gitlab_url=gitlab,
        secret=cp.keys.cipher.decrypt(app.webhook_secret_encrypted),
    )


@bp.post("/hooks/<org_id>/<app_id>/<provider>")
@hide
async def push_hook(org_id: str, app_id: str, provider: str) -> tuple[dict[str, Any], int]:
    """A git push from GitHub or GitLab: verified, then deployed if it is the tracked branch."""
    cp = current()
    try:
        org, app_uuid = uuid.UUID(org_id), uuid.UUID(app_id)
    except ValueError:
        raise NotFound("no such webhook", code="HOOK404") from None
    body = await request.get_data(as_text=False)
    assert isinstance(body, bytes)
    async with scoped(org):
        app = await App.get_or_none(id=app_uuid)
    if app is None or provider not in ("github", "gitlab"):
        raise NotFound("no such webhook", code="HOOK404")
    secret = cp.keys.cipher.decrypt(app.webhook_secret_encrypted)
    who = f"webhook:{provider}"

    async def audited(outcome: str, details: dict[str, Any]) -> None:
        await audit.append(
            org, audit.Record(who, "webhook.push", f"app:{app.name}", details, outcome)
        )

    try:
        check = github_push if provider == "github" else gitlab_push
        push = check(request.headers, body, secret)
    except WebhookError as exc:
        exc.log(provider, app.name)
        await audited(exc.code, {})
        raise exc.as_http() from None
    if push is None:
        await audited("ignored", {"reason": "not a push event"})
        return {"status": "ignored", "reason": "not a push event"}, 200
    # An app without a branch follows the default one the push names (or the last found).
    tracked = app.branch or push.default_branch or app.default_branch
    if push.branch != tracked:
        reason = f"push to {push.branch}, tracking {tracked or 'the default branch'}"
        await audited("ignored", {"reason": reason, "commit": push.commit})
        return {"status": "ignored", "reason": reason}, 200
    deps = await cp.deployer.deploy(org, app, who, commit=push.commit, branch=push.branch)
    await audited(
        "ok",
        {"branch": push.branch, "commit": push.commit, "deployments": [str(d.id) for d in deps]},
    )
    return {"status": "deploying", "deployments": [str(d.id) for d in deps]}, 202
