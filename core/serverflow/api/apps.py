"""Apps, their deployments and logs, rollbacks, and git push webhooks."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator
from quart import Response, request
from quart_schema import hide, validate_querystring, validate_request, validate_response
from tortoise.exceptions import IntegrityError

from serverflow import audit
from serverflow.api import bp
from serverflow.api.schemas import ErrorOut, Input, Output, parse_id
from serverflow.auth import principal, requires
from serverflow.controlplane import ControlPlane, current
from serverflow.deploys.service import decrypt_env, encrypt_env, is_final
from serverflow.deploys.webhooks import (
    WebhookError,
    github_push,
    gitlab_push,
    hook_urls,
)
from serverflow.errors import Conflict, InvalidInput, NotFound
from serverflow.models import (
    App,
    AppServer,
    Deployment,
    DeploymentLog,
    Role,
    Server,
)
from serverflow.tenancy import scoped

NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SHELL_SYNTAX = re.compile(r"(&&|\|\||[|;<>`$]|\$\()")
MASK = "********"


def _argv(command: str, what: str) -> list[str]:
    """A command line split like a shell would, but never run by one."""
    if SHELL_SYNTAX.search(command):
        raise ValueError(
            f"{what} {command!r} uses shell syntax (pipes, redirects, &&, variables); "
            "commands run without a shell: give each step as its own command"
        )
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"{what} {command!r}: {exc}") from exc
    if not argv:
        raise ValueError(f"{what} is empty")
    return argv


def _check_repo(repo: str) -> str:
    repo = repo.strip()
    if repo.startswith("-") or "::" in repo.split("/")[0]:
        raise ValueError("repository must be an https://, ssh:// or git@host: URL, or a path")
    if not re.match(r"^(https?://|ssh://|git://|file://|git@[^:]+:|/)", repo):
        raise ValueError(
            "repository must be an https://, ssh:// or git@host: URL, or an "
            "absolute path on the server"
        )
    return repo


class AppFields(Input):
    repo: str | None = Field(default=None, max_length=1000)
    branch: str | None = Field(
        default=None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._/-]+$"
    )
    build: list[str] | None = Field(
        default=None, max_length=20, description="Build steps, each one command (no shell)."
    )
    start: str | None = Field(default=None, max_length=1000)
    port: int | None = Field(default=None, ge=1, le=65535)
    health_path: str | None = Field(default=None, pattern=r"^/[^\s]*$", max_length=255)
    health_timeout_s: int | None = Field(default=None, ge=1, le=1800)
    domains: list[str] | None = Field(default=None, max_length=50)
    tls: bool | None = None
    runtime: str | None = Field(default=None, max_length=40)
    keep_releases: int | None = Field(default=None, ge=2, le=50)

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        return None if value is None else _check_repo(value)

    @field_validator("build")
    @classmethod
    def _build(cls, value: list[str] | None) -> list[str] | None:
        for step in value or []:
            _argv(step, "build step")
        return value

    @field_validator("start")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        if value is not None:
            _argv(value, "start command")
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [d.strip().lower().rstrip(".") for d in value]
        for domain in cleaned:
            if not HOSTNAME.match(domain):
                raise ValueError(f"{domain!r} is not a valid domain name")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("domains must be unique")
        return cleaned


class AppIn(AppFields):
    name: str = Field(pattern=NAME)
    repo: str = Field(max_length=1000)
    servers: list[str] = Field(min_length=1, max_length=100)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not ENV_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if len(item) > 32_768:
                raise ValueError(f"the value of {key} is too long")
        return value


class AppPatch(AppFields):
    servers: list[str] | None = Field(default=None, min_length=1, max_length=100)


class EnvIn(Input):
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)

    @field_validator("set")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        return AppIn._env(value)


class AppOut(Output):
    id: uuid.UUID
    name: str
    repo: str
    branch: str
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
    servers: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class AppList(Output):
    apps: list[AppOut]


class DeploymentOut(Output):
    id: uuid.UUID
    app_id: uuid.UUID
    server_id: uuid.UUID
    number: int
    kind: str
    branch: str
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


class DeployIn(Input):
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    branch: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._/-]+$", max_length=255)


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


class LogQuery(BaseModel):
    follow: bool = False
    after: int = Field(default=0, ge=0)


class WebhookOut(BaseModel):
    github_url: str
    gitlab_url: str
    secret: str


async def _servers_by_ref(refs: list[str]) -> list[Server]:
    servers = []
    for ref in refs:
        try:
            server = await Server.get_or_none(id=uuid.UUID(ref))
        except ValueError:
            server = await Server.get_or_none(name=ref)
        if server is None:
            raise NotFound(f"server {ref!r} not found", code="SRV001")
        servers.append(server)
    return servers


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
    env = decrypt_env(cp.keys.cipher, app.env_encrypted)
    return AppOut(
        id=app.id,
        name=app.name,
        repo=app.repo_url,
        branch=app.branch,
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
        servers=[
            {
                "id": str(p.server_id),
                "name": servers[p.server_id].name,
                "live_deployment_id": str(p.live_deployment_id) if p.live_deployment_id else None,
            }
            for p in placements
        ],
        created_at=app.created_at,
        updated_at=app.updated_at,
    )


def _check_runtime(runtime: str) -> None:
    runtimes = current().plugins.runtimes
    if runtime not in runtimes:
        known = ", ".join(runtimes.names()) or "none installed"
        raise InvalidInput(f"unknown runtime {runtime!r} (installed: {known})", code="APP002")


def _apply(app: App, data: AppFields) -> None:
    if data.repo is not None:
        app.repo_url = data.repo
    if data.branch is not None:
        app.branch = data.branch
    if data.build is not None:
        app.build_commands = [_argv(step, "build step") for step in data.build] or None
    if data.start is not None:
        app.start_command = _argv(data.start, "start command")
    if data.port is not None:
        app.port = data.port
    if data.health_path is not None:
        app.health_path = data.health_path
    if data.health_timeout_s is not None:
        app.health_timeout_s = data.health_timeout_s
    if data.domains is not None:
        app.domains = data.domains
    if data.tls is not None:
        app.tls = data.tls
    if data.runtime is not None:
        _check_runtime(data.runtime)
        app.runtime = data.runtime
    if data.keep_releases is not None:
        app.keep_releases = data.keep_releases


async def _check_domains_free(app: App) -> None:
    for other in await App.exclude(id=app.id):
        taken = set(other.domains or []) & set(app.domains or [])
        if taken:
            raise Conflict(
                f"{', '.join(sorted(taken))} already used by app {other.name}", code="APP004"
            )


@bp.get("/apps")
@requires(Role.VIEWER)
@validate_response(AppList)
async def list_apps() -> AppList:
    return AppList(apps=[await _out(a) for a in await App.all().order_by("name")])


async def new_app(cp: ControlPlane, data: AppIn) -> tuple[App, list[Server]]:
    """The app `data` describes and its servers, checked, not saved yet (inside `scoped`).

    POST /apps and the MCP create_app tool (which previews it first) both go through here.
    """
    if await App.filter(name=data.name).exists():
        raise Conflict(f"an app named {data.name!r} already exists", code="APP005")
    servers = await _servers_by_ref(data.servers)
    app = App(name=data.name, repo_url=data.repo, webhook_secret_encrypted="")
    _apply(app, data)
    if data.runtime is None:
        _check_runtime(app.runtime)
    app.env_encrypted = encrypt_env(cp.keys.cipher, data.env)
    await _check_domains_free(app)
    return app, servers


async def save_new_app(cp: ControlPlane, app: App, servers: list[Server]) -> None:
    """Store an app from `new_app` with its webhook secret and its placements."""
    app.webhook_secret_encrypted = cp.keys.cipher.encrypt(secrets.token_urlsafe(32))
    try:
        await app.save()
    except IntegrityError as exc:
        raise Conflict(f"an app named {app.name!r} already exists", code="APP005") from exc
    for server in servers:
        await AppServer.create(app_id=app.id, server_id=server.id)


@bp.post("/apps")
@requires(Role.MEMBER)
@validate_request(AppIn)
@validate_response(AppOut, 201)
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
async def update_app(app_id: str, data: AppPatch) -> AppOut:
    """Change settings; they take effect at the next deploy."""
    app = await get_app(app_id)
    _apply(app, data)
    await _check_domains_free(app)
    await app.save()
    if data.servers is not None:
        wanted = {s.id for s in await _servers_by_ref(data.servers)}
        placed = {p.server_id for p in await AppServer.filter(app_id=app.id)}
        for server_id in wanted - placed:
            await AppServer.create(app_id=app.id, server_id=server_id)
        if placed - wanted:
            raise InvalidInput(
                "removing an app from a server is not supported yet; delete and recreate the app",
                code="APP006",
            )
    return await _out(app)


@bp.put("/apps/<app_id>/env")
@requires(Role.MEMBER)
@validate_request(EnvIn)
@validate_response(AppOut)
async def set_env(app_id: str, data: EnvIn) -> AppOut:
    """Set or unset environment variables (encrypted at rest; used from the next deploy)."""
    app = await get_app(app_id)
    cipher = current().keys.cipher
    env = decrypt_env(cipher, app.env_encrypted)
    env.update(data.set)
    for key in data.unset:
        env.pop(key, None)
    app.env_encrypted = encrypt_env(cipher, env)
    await app.save(update_fields=["env_encrypted", "updated_at"])
    return await _out(app)


@bp.delete("/apps/<app_id>")
@requires(Role.ADMIN, atomic=False)
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
async def deploy_app(app_id: str, data: DeployIn) -> tuple[DeploymentList, int]:
    """Start a deployment on each of the app's servers; follow it with .../logs?follow=true."""
    caller = principal()
    async with scoped(caller.org_id):
        app = await get_app(app_id)
    deps = await current().deployer.deploy(
        caller.org_id, app, caller.label, commit=data.commit, branch=data.branch
    )
    return DeploymentList(deployments=[DeploymentOut.model_validate(d) for d in deps]), 202


@bp.post("/apps/<app_id>/rollback")
@requires(Role.MEMBER, atomic=False)
@validate_request(RollbackIn)
@validate_response(DeploymentList, 202)
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
    if push.branch != app.branch:
        reason = f"push to {push.branch}, tracking {app.branch}"
        await audited("ignored", {"reason": reason, "commit": push.commit})
        return {"status": "ignored", "reason": reason}, 200
    deps = await cp.deployer.deploy(org, app, who, commit=push.commit, branch=push.branch)
    await audited(
        "ok",
        {"branch": push.branch, "commit": push.commit, "deployments": [str(d.id) for d in deps]},
    )
    return {"status": "deploying", "deployments": [str(d.id) for d in deps]}, 202
