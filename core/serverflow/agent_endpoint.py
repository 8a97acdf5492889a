"""HTTP and WebSocket endpoints agents use: install script, wheels, registration, channel.

A surface like `api/` and `mcp/`: it reaches the hub through the control plane, so
`serverflow.agents` (the hub and what it needs) never imports the control plane.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
from datetime import UTC, datetime
from importlib import resources

from pydantic import Field
from quart import Blueprint, Response, websocket
from quart_schema import hide, validate_request

from serverflow import audit
from serverflow.agents.install import ws_url
from serverflow.agents.wheels import agent_wheels
from serverflow.api.schemas import Input
from serverflow.auth import client_ip
from serverflow.controlplane import current
from serverflow.errors import AuthenticationRequired, NotFound
from serverflow.events import record
from serverflow.models import Server
from serverflow.tenancy import scoped
from serverflow.tokens import INSTALL_PREFIX, hash_token, token_org
from serverflow_contract import protocol

log = logging.getLogger(__name__)

bp = Blueprint("agents", __name__)


@bp.get("/install.sh")
@hide
async def install_script() -> Response:
    cp = current()
    template = resources.files("serverflow.agents").joinpath("install.sh.tmpl").read_text()
    # With each wheel's hash, a second run keeps what it already has (idempotent, fast).
    wheels = " ".join(
        f"{name}={hashlib.sha256(wheel.data).hexdigest()}"
        for name, wheel in sorted(agent_wheels().items())
    )
    script = (
        template.replace("__URL__", cp.settings.base_url)
        .replace("__WHEELS__", wheels)
        .replace("__PIN__", cp.tls_pin or "")
    )
    return Response(script, content_type="text/x-shellscript; charset=utf-8")


@bp.get("/agent/wheels/<filename>")
@hide
async def wheel(filename: str) -> Response:
    found = agent_wheels().get(filename)
    if found is None:
        raise NotFound(f"no wheel {filename}", code="GEN404")
    return Response(found.data, content_type="application/octet-stream")


class RegisterIn(Input):
    token: str = Field(max_length=200)
    public_key: str = Field(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]+$")
    hostname: str = Field(default="", max_length=255)
    agent_version: str = Field(default="", max_length=40)


class _BadToken(AuthenticationRequired):
    def __init__(self, reason: str) -> None:
        super().__init__(
            "The install token is invalid, expired or already used; create a new one with "
            "`serverflow servers install-token NAME`.",
            code="INS001",
        )
        self.reason = reason  # for the audit log only: the caller learns nothing more


@bp.post("/api/v1/agents/register")
@hide
@validate_request(RegisterIn)
async def register(data: RegisterIn) -> Response:
    """Trade a one-time install token for this server's identity (no user auth: the token is it)."""
    try:
        return await _register(data)
    except _BadToken as refused:
        # An install token nobody issued names no organisation we can trust: the instance's.
        await current().refusals.note(
            audit.INSTANCE,
            "agent.registration_refused",
            refused.code,
            actor="anonymous",
            source=client_ip(),
            reason=refused.reason,
            details={"hostname": data.hostname[:100]},
        )
        raise


async def _register(data: RegisterIn) -> Response:
    cp = current()
    org_id = token_org(data.token, INSTALL_PREFIX)
    if org_id is None:
        raise _BadToken("malformed token")
    try:
        protocol.b64d(data.public_key)
    except ValueError:
        raise _BadToken("malformed public key") from None
    digest = hash_token(data.token)
    now = datetime.now(UTC)
    # Everything the answer needs is ready before the token is spent.
    control_plane_key = cp.hub.key.public_key
    async with scoped(org_id):
        server = await Server.get_or_none(install_token_hash=digest)
        if server is None or not hmac.compare_digest(server.install_token_hash or "", digest):
            raise _BadToken("unknown or already used token")
        if server.install_token_expires_at is None or server.install_token_expires_at <= now:
            raise _BadToken("expired token")
        # Single use even under concurrency: only one UPDATE can match the hash.
        claimed = await Server.filter(id=server.id, install_token_hash=digest).update(
            install_token_hash=None,
            install_token_expires_at=None,
            registered_at=now,
            agent_public_key=data.public_key,
            hostname=data.hostname or socket.getfqdn(),
            agent_version=data.agent_version,
        )
        if claimed != 1:
            raise _BadToken("token used concurrently")
    log.info(
        "server %s (%s) registered its agent, key %s",
        server.name,
        server.id,
        protocol.key_id(data.public_key),
    )
    await audit.append(
        org_id,
        audit.Record(
            actor=f"agent:{server.id}",
            action="agent.registered",
            target=f"server:{server.name}",
            details={
                "server_id": str(server.id),
                "key_id": protocol.key_id(data.public_key),
                "hostname": data.hostname,
                "source": client_ip(),
            },
        ),
    )
    await record(
        cp.bus,
        "agent.registered",
        org_id,
        server.id,
        {
            "name": server.name,
            "key_id": protocol.key_id(data.public_key),
            "hostname": data.hostname,
        },
    )
    body = {
        "server_id": str(server.id),
        "org_id": str(org_id),
        "control_plane_key": control_plane_key,
        "ws_url": ws_url(cp.settings.base_url),
        "heartbeat_interval_ms": cp.settings.heartbeat_interval_ms,
    }
    if cp.tls_pin:
        body["tls_pin"] = cp.tls_pin
    response = Response(protocol.canonical(body), content_type="application/json")
    response.status_code = 201
    return response


@bp.websocket("/agent/ws")
async def agent_channel() -> None:
    # The object itself, not the context-local proxy: other tasks send and close through it.
    await current().hub.serve(websocket._get_current_object())  # type: ignore[attr-defined]
