"""Servers: the machines an organisation manages, their agents, actions and metrics."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from quart_schema import validate_querystring, validate_request, validate_response
from tortoise.exceptions import IntegrityError

from serverflow.agents.install import install_command, new_install_token
from serverflow.agents.registry import allowed_actions, check_action, may_run
from serverflow.api import bp
from serverflow.api.openapi import answers
from serverflow.api.schemas import ErrorOut, Input, Output, parse_id
from serverflow.auth import principal, requires
from serverflow.controlplane import current
from serverflow.errors import Conflict, NotFound, PermissionDenied
from serverflow.models import Command, Event, Heartbeat, Role, SecurityMode, Server
from serverflow.tenancy import scoped
from serverflow_contract import naming

NAME = f"^(?:{naming.SERVER_NAME})$"
ModeName = Literal["full", "standard", "read-only"]
# Who may run an action of each kind.


class ServerIn(Input):
    name: str = Field(pattern=NAME, description="DNS-label style: a-z, 0-9, '-'")
    description: str = Field(default="", max_length=500)
    security_mode: ModeName = "full"


class ServerPatch(Input):
    name: str | None = Field(default=None, pattern=NAME)
    description: str | None = Field(default=None, max_length=500)
    security_mode: ModeName | None = None


class ServerOut(Output):
    id: uuid.UUID
    name: str
    description: str
    status: str
    security_mode: str
    created_at: datetime
    last_seen_at: datetime | None
    registered_at: datetime | None
    hostname: str
    agent_version: str
    metrics: dict[str, Any] | None


class InstallOut(Output):
    token: str = Field(description="One-time install token; shown only in this response.")
    expires_at: datetime
    command: str


class ServerCreatedOut(ServerOut):
    install: InstallOut


class ServerList(Output):
    servers: list[ServerOut]


class ActionOut(BaseModel):
    name: str
    kind: str
    description: str
    params_schema: dict[str, Any]
    timeout: float
    memory_limit_mb: int


class ActionList(BaseModel):
    server: str
    security_mode: str
    actions: list[ActionOut]


class RunIn(Input):
    params: dict[str, Any] = Field(default_factory=dict)


class CommandOut(Output):
    id: uuid.UUID
    server_id: uuid.UUID
    action: str
    kind: str
    params: dict[str, Any]
    issued_by: str
    status: str
    code: str | None
    message: str | None
    output: Any = None
    signing_key_id: str
    result_body: dict[str, Any] | None = Field(
        default=None,
        description="The result exactly as the agent signed it (canonical JSON of this "
        "object), to check `result_signature` with the server's agent key.",
    )
    result_signature: str | None = Field(
        default=None, description="The agent's Ed25519 signature of `result_body`."
    )
    created_at: datetime
    finished_at: datetime | None


class CommandList(Output):
    commands: list[CommandOut]


class HeartbeatOut(Output):
    at: datetime
    metrics: dict[str, Any]


class HeartbeatList(Output):
    heartbeats: list[HeartbeatOut]


class EventOut(Output):
    id: int
    kind: str
    server_id: uuid.UUID | None
    data: dict[str, Any]
    at: datetime


class EventList(Output):
    events: list[EventOut]


class Limit(BaseModel):
    limit: int = Field(default=100, ge=1, le=1000)


async def get_server(server_id: str) -> Server:
    server = await Server.get_or_none(id=parse_id(server_id, "SRV001", "server"))
    if server is None:
        raise NotFound(f"server {server_id} not found", code="SRV001")
    return server


async def _check_name_free(name: str, exclude: uuid.UUID | None = None) -> None:
    query = Server.filter(name=name)
    if exclude:
        query = query.exclude(id=exclude)
    if await query.exists():
        raise Conflict(f"a server named {name!r} already exists", code="SRV002")


async def _new_install_token(server: Server) -> InstallOut:
    cp = current()
    value, digest = new_install_token(server.organization_id)
    expires = datetime.now(UTC) + timedelta(minutes=cp.settings.install_token_minutes)
    server.install_token_hash = digest
    server.install_token_expires_at = expires
    await server.save(update_fields=["install_token_hash", "install_token_expires_at"])
    return InstallOut(
        token=value, expires_at=expires, command=install_command(cp.settings.base_url, value)
    )


@bp.get("/servers")
@requires(Role.VIEWER)
@validate_response(ServerList)
async def list_servers() -> ServerList:
    servers = await Server.all().order_by("name")
    return ServerList(servers=[ServerOut.model_validate(s) for s in servers])


@bp.post("/servers")
@requires(Role.MEMBER)
@validate_request(ServerIn)
@validate_response(ServerCreatedOut, 201)
@validate_response(ErrorOut, 409)
async def create_server(data: ServerIn) -> tuple[ServerCreatedOut, int]:
    """Create a server and a one-time install token for its agent (valid one hour)."""
    await _check_name_free(data.name)
    try:
        server = await Server.create(
            name=data.name,
            description=data.description,
            security_mode=SecurityMode(data.security_mode),
        )
    except IntegrityError as exc:
        raise Conflict(f"a server named {data.name!r} already exists", code="SRV002") from exc
    install = await _new_install_token(server)
    out = ServerCreatedOut(**ServerOut.model_validate(server).model_dump(), install=install)
    return out, 201


@bp.get("/servers/<server_id>")
@requires(Role.VIEWER)
@validate_response(ServerOut)
@validate_response(ErrorOut, 404)
async def read_server(server_id: str) -> ServerOut:
    return ServerOut.model_validate(await get_server(server_id))


@bp.patch("/servers/<server_id>")
@requires(Role.MEMBER)
@validate_request(ServerPatch)
@validate_response(ServerOut)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)  # a name another server has
async def update_server(server_id: str, data: ServerPatch) -> ServerOut:
    server = await get_server(server_id)
    if data.name is not None and data.name != server.name:
        await _check_name_free(data.name, exclude=server.id)
        server.name = data.name
    if data.description is not None:
        server.description = data.description
    mode = SecurityMode(data.security_mode) if data.security_mode is not None else None
    mode_changed = mode is not None and mode != server.security_mode
    if mode is not None and mode_changed:
        if not principal().can(Role.ADMIN):
            raise PermissionDenied("Changing a server's security mode needs the admin role.")
        server.security_mode = mode
        server.registry_version += 1
    await server.save()
    if mode_changed:
        await current().hub.push_registry(server)
    return ServerOut.model_validate(server)


@bp.delete("/servers/<server_id>")
@requires(Role.ADMIN)
@answers(204, "The server was deleted.")
@validate_response(ErrorOut, 404)
async def delete_server(server_id: str) -> tuple[str, int]:
    server = await get_server(server_id)
    await server.delete()
    return "", 204


@bp.post("/servers/<server_id>/install-token")
@requires(Role.ADMIN)
@validate_response(InstallOut, 201)
@validate_response(ErrorOut, 404)
async def create_install_token(server_id: str) -> tuple[InstallOut, int]:
    """A new one-time install token; registering with it replaces the server's agent key."""
    return await _new_install_token(await get_server(server_id)), 201


@bp.get("/servers/<server_id>/actions")
@requires(Role.VIEWER)
@validate_response(ActionList)
@validate_response(ErrorOut, 404)
async def list_actions(server_id: str) -> ActionList:
    """The actions this server may run: its agent's actions allowed by the security mode."""
    server = await get_server(server_id)
    return ActionList(
        server=server.name,
        security_mode=server.security_mode,
        actions=[ActionOut(**a) for a in allowed_actions(server)],
    )


@bp.post("/servers/<server_id>/actions/<action>")
@requires(Role.VIEWER, atomic=False)
@validate_request(RunIn)
@validate_response(CommandOut)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)  # the agent is not connected
async def run_action(server_id: str, action: str, data: RunIn) -> CommandOut:
    """Send a signed command to the server's agent and wait for its signed result."""
    caller = principal()
    async with scoped(caller.org_id):
        server = await get_server(server_id)
    spec = check_action(server, action, data.params, caller.role)
    command = await current().hub.run(
        caller.org_id,
        server,
        action,
        spec["kind"],
        data.params,
        caller.label,
        timeout_s=float(spec["timeout"]) + 15,
    )
    return CommandOut.model_validate(command)


@bp.get("/servers/<server_id>/commands")
@requires(Role.VIEWER)
@validate_querystring(Limit)
@validate_response(CommandList)
async def list_commands(server_id: str, query_args: Limit) -> CommandList:
    server = await get_server(server_id)
    rows = await Command.filter(server_id=server.id).order_by("-created_at").limit(query_args.limit)
    return CommandList(commands=[CommandOut.model_validate(c) for c in rows])


@bp.get("/servers/<server_id>/heartbeats")
@requires(Role.VIEWER)
@validate_querystring(Limit)
@validate_response(HeartbeatList)
async def list_heartbeats(server_id: str, query_args: Limit) -> HeartbeatList:
    server = await get_server(server_id)
    rows = await Heartbeat.filter(server_id=server.id).order_by("-id").limit(query_args.limit)
    return HeartbeatList(heartbeats=[HeartbeatOut.model_validate(h) for h in rows])


@bp.get("/commands/<command_id>")
@requires(Role.VIEWER)
@validate_response(CommandOut)
@validate_response(ErrorOut, 404)
async def read_command(command_id: str) -> CommandOut:
    command = await Command.get_or_none(id=parse_id(command_id, "CMD404", "command"))
    if command is None:
        raise NotFound(f"command {command_id} not found", code="CMD404")
    return CommandOut.model_validate(command)


@bp.get("/events")
@requires(Role.VIEWER)
@validate_querystring(Limit)
@validate_response(EventList)
async def list_events(query_args: Limit) -> EventList:
    rows = await Event.all().order_by("-id").limit(query_args.limit)
    return EventList(events=[EventOut.model_validate(e) for e in rows])


class FanOutIn(Input):
    servers: list[str] | None = Field(
        default=None,
        max_length=10_000,
        description="Server ids; default: every connected server whose agent has the action.",
    )
    params: dict[str, Any] = Field(default_factory=dict)


class FanOutCommand(CommandOut):
    latency_ms: float | None = Field(
        description="From signing the command to its verified result, on the control plane."
    )


class FanOutList(Output):
    commands: list[FanOutCommand]


@bp.post("/actions/<action>")
@requires(Role.VIEWER, atomic=False)
@validate_request(FanOutIn)
@validate_response(FanOutList)
async def fan_out(action: str, data: FanOutIn) -> FanOutList:
    """Run one action on many servers at once; each gets its own signed command."""
    caller = principal()
    hub = current().hub
    async with scoped(caller.org_id):
        if data.servers is None:
            servers = [s for s in await Server.all() if hub.connected(s)]
        else:
            ids = [parse_id(s, "SRV001", "server") for s in data.servers]
            servers = await Server.filter(id__in=ids)
            if len(servers) != len(set(ids)):
                missing = set(ids) - {s.id for s in servers}
                raise NotFound(f"servers not found: {', '.join(map(str, missing))}", code="SRV001")
    targets = []
    timeout = 15.0
    kinds = set()
    for server in servers:
        if not hub.connected(server):
            targets.append(server)  # recorded as undelivered, like any unreachable target
            continue
        if data.servers is None and not may_run(server, action):
            continue  # "every server that can": this one cannot
        spec = check_action(server, action, data.params, caller.role)
        kinds.add(spec["kind"])
        timeout = max(timeout, float(spec["timeout"]) + 15)
        targets.append(server)
    kind = "destructive" if "destructive" in kinds else "change" if "change" in kinds else "read"
    outcomes = await hub.run_many(
        caller.org_id, targets, action, kind, data.params, caller.label, timeout
    )
    return FanOutList(
        commands=[
            FanOutCommand(
                **CommandOut.model_validate(o.command).model_dump(), latency_ms=o.latency_ms
            )
            for o in outcomes
        ]
    )
