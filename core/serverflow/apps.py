"""Apps as the REST API and the operations build them: input models, checks, creation."""

from __future__ import annotations

import re
import secrets
import shlex
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, field_validator
from tortoise.exceptions import IntegrityError

from serverflow import audit
from serverflow.controlplane import ControlPlane, current
from serverflow.deploys.service import encrypt_env
from serverflow.errors import Conflict, InvalidInput, NotFound
from serverflow.models import App, AppServer, Server
from serverflow.schemas import Input
from serverflow.tenancy import scoped
from serverflow_contract import naming

SHELL_SYNTAX = re.compile(r"(&&|\|\||[|;<>`$]|\$\()")


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


def naming_rule(check: Callable[[Any], Any], value: Any) -> Any:
    """A contract naming rule as a pydantic validator (None passes: the field is unset)."""
    return None if value is None else check(value)


class AppFields(Input):
    """App settings. In a PATCH, null sets branch, build, start and port back to their
    default: the repository's default branch, detection, a fresh port per release."""

    repo: str | None = Field(default=None, max_length=naming.REPO_URL_MAX)
    branch: str | None = Field(
        default=None,
        min_length=1,
        max_length=naming.BRANCH_MAX,
        description="The branch deployed; null: the repository's default branch.",
    )
    build: list[str] | None = Field(
        default=None, max_length=20, description="Build steps, each one command (no shell)."
    )
    start: str | None = Field(default=None, max_length=1000)
    port: int | None = Field(default=None, ge=1, le=65535)
    health_path: str | None = Field(default=None, max_length=naming.HEALTH_PATH_MAX)
    health_timeout_s: int | None = Field(default=None, ge=1, le=1800)
    domains: list[str] | None = Field(default=None, max_length=50)
    tls: bool | None = None
    runtime: str | None = Field(default=None, max_length=naming.RUNTIME_NAME_MAX)
    keep_releases: int | None = Field(default=None, ge=2, le=50)

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        return naming_rule(naming.check_repo_url, value)

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        return naming_rule(naming.check_branch, value)

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, value: str | None) -> str | None:
        return naming_rule(naming.check_health_path, value)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str | None) -> str | None:
        return naming_rule(naming.check_runtime_name, value)

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
        cleaned = [naming.check_domain(d) for d in value]
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("domains must be unique")
        return cleaned


class AppIn(AppFields):
    name: str = Field(max_length=naming.APP_NAME_MAX)
    repo: str = Field(max_length=naming.REPO_URL_MAX)
    servers: list[str] = Field(min_length=1, max_length=100)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return naming.check_app_name(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return naming.check_env(value)


class AppPatch(AppFields):
    servers: list[str] | None = Field(default=None, min_length=1, max_length=100)


ProcessCount = Annotated[int, Field(ge=0, le=naming.PROCESS_SCALE_MAX)]
FORMATION_MAX = 20  # process types per app, as the desired-state schema allows


class FormationIn(Input):
    scale: dict[str, ProcessCount] = Field(
        min_length=1,
        max_length=FORMATION_MAX,
        description='Processes per Procfile type, e.g. {"worker": 2, "clock": 0}; '
        "types not named keep their count (1 unless scaled).",
    )

    @field_validator("scale")
    @classmethod
    def _types(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            naming.check_process_type(name)
        return value


def scaled(app: App, scale: dict[str, int]) -> dict[str, int]:
    """The app's formation with `scale` applied (not saved); web and release refused."""
    fixed = sorted(set(scale) & {naming.WEB, naming.RELEASE})
    if fixed:
        raise InvalidInput(
            f"{' and '.join(fixed)} cannot be scaled: web runs one process per server (the "
            "one the proxy sends requests to) and release runs once per deploy; scale the "
            "other process types of the Procfile, e.g. worker=2",
            code="APP007",
        )
    formation = {**(app.formation or {}), **scale}
    if len(formation) > FORMATION_MAX:
        raise InvalidInput(
            f"an app has at most {FORMATION_MAX} process types; {app.name} would have "
            f"{len(formation)}",
            code="VAL001",
        )
    return dict(sorted(formation.items()))


async def servers_by_ref(refs: list[str]) -> list[Server]:
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


def _check_runtime(runtime: str) -> None:
    runtimes = current().plugins.runtimes
    if runtime not in runtimes:
        known = ", ".join(runtimes.names()) or "none installed"
        raise InvalidInput(f"unknown runtime {runtime!r} (installed: {known})", code="APP002")


def apply_fields(app: App, data: AppFields) -> None:
    given = data.model_fields_set
    if data.repo is not None:
        app.repo_url = data.repo
    if "branch" in given:
        app.branch = data.branch
    if "build" in given:  # [] or null: detected at deploy
        app.build_commands = [_argv(step, "build step") for step in data.build or []] or None
    if "start" in given:
        app.start_command = _argv(data.start, "start command") if data.start else None
    if "port" in given:
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


async def check_domains_free(app: App) -> None:
    for other in await App.exclude(id=app.id):
        taken = set(other.domains or []) & set(app.domains or [])
        if taken:
            raise Conflict(
                f"{', '.join(sorted(taken))} already used by app {other.name}", code="APP004"
            )


async def new_app(cp: ControlPlane, data: AppIn) -> tuple[App, list[Server]]:
    """The app `data` describes and its servers, checked, not saved yet (inside `scoped`).

    POST /apps and the create_app operation (which previews it first) both go through here.
    """
    if await App.filter(name=data.name).exists():
        raise Conflict(f"an app named {data.name!r} already exists", code="APP005")
    servers = await servers_by_ref(data.servers)
    app = App(name=data.name, repo_url=data.repo, webhook_secret_encrypted="")
    apply_fields(app, data)
    if data.runtime is None:
        _check_runtime(app.runtime)
    app.env_encrypted = encrypt_env(cp.keys.cipher, data.env)
    await check_domains_free(app)
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


async def follow_branch(org_id: uuid.UUID, app: App, branch: str, actor: str) -> bool:
    """Make `app` follow `branch` from now on (`deploy --branch` is remembered, as Heroku
    and Dokku users expect), audited; False if it already did."""
    before = app.branch
    if before == branch:
        return False
    async with scoped(org_id):
        await App.filter(id=app.id).update(branch=branch)
    app.branch = branch
    await audit.append(
        org_id,
        audit.Record(
            actor,
            "app.branch_changed",
            f"app:{app.name}",
            {"from": before, "to": branch, "by": "deploy"},
        ),
    )
    return True
