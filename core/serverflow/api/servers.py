"""Servers: the machines an organisation manages."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from quart_schema import validate_request, validate_response
from tortoise.exceptions import IntegrityError

from serverflow.api import bp
from serverflow.api.schemas import ErrorOut, Input, Output, parse_id
from serverflow.auth import requires
from serverflow.errors import Conflict, NotFound
from serverflow.models import Role, Server

NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class ServerIn(Input):
    name: str = Field(pattern=NAME, description="DNS-label style: a-z, 0-9, '-'")
    description: str = Field(default="", max_length=500)


class ServerPatch(Input):
    name: str | None = Field(default=None, pattern=NAME)
    description: str | None = Field(default=None, max_length=500)


class ServerOut(Output):
    id: uuid.UUID
    name: str
    description: str
    status: str
    created_at: datetime
    last_seen_at: datetime | None


class ServerList(Output):
    servers: list[ServerOut]


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


@bp.get("/servers")
@requires(Role.VIEWER)
@validate_response(ServerList)
async def list_servers() -> ServerList:
    servers = await Server.all().order_by("name")
    return ServerList(servers=[ServerOut.model_validate(s) for s in servers])


@bp.post("/servers")
@requires(Role.MEMBER)
@validate_request(ServerIn)
@validate_response(ServerOut, 201)
@validate_response(ErrorOut, 409)
async def create_server(data: ServerIn) -> tuple[ServerOut, int]:
    await _check_name_free(data.name)
    try:
        server = await Server.create(name=data.name, description=data.description)
    except IntegrityError as exc:
        raise Conflict(f"a server named {data.name!r} already exists", code="SRV002") from exc
    return ServerOut.model_validate(server), 201


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
async def update_server(server_id: str, data: ServerPatch) -> ServerOut:
    server = await get_server(server_id)
    if data.name is not None and data.name != server.name:
        await _check_name_free(data.name, exclude=server.id)
        server.name = data.name
    if data.description is not None:
        server.description = data.description
    await server.save()
    return ServerOut.model_validate(server)


@bp.delete("/servers/<server_id>")
@requires(Role.ADMIN)
@validate_response(ErrorOut, 404)
async def delete_server(server_id: str) -> tuple[str, int]:
    server = await get_server(server_id)
    await server.delete()
    return "", 204
