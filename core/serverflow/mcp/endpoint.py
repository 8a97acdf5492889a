"""`/mcp` on the control plane: the SDK's streamable HTTP transport behind an API token.

Quart is an ASGI app, so the endpoint wraps `app.asgi_app`: requests to `/mcp` are
authenticated with the same code as the REST API (no token or a bad one: HTTP 401 with our
JSON error, before any MCP handling) and handed to the SDK's session manager; everything
else goes to Quart unchanged. The session manager runs from `before_serving` to
`after_serving`.

The transport is stateless: every request stands alone (no session to pin to one
instance), so any control-plane instance behind a load balancer can answer it, and a
restart loses nothing.
"""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from quart import Quart
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tortoise.exceptions import BaseORMException

from serverflow import audit
from serverflow.auth import token_principal
from serverflow.controlplane import ControlPlane
from serverflow.errors import (
    AuthenticationRequired,
    BodyTooLarge,
    DatabaseError,
    InvalidInput,
    ServerFlowError,
    TooManyRequests,
)
from serverflow.mcp.caller import CALLER
from serverflow.mcp.server import ServerFlowMCP

log = logging.getLogger(__name__)

PATH = "/mcp"


class McpEndpoint:
    def __init__(self, app: Quart, cp: ControlPlane) -> None:
        self.cp = cp
        self.server = ServerFlowMCP(app, cp)
        self.server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            max_request_body_size=cp.settings.max_body_bytes,
            # Every request carries a bearer token a hostile page cannot know, and there is
            # no cookie to ride on: DNS-rebinding protection (a Host allow-list) would only
            # break deployments behind a proxy or on a public name.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager = self.server.session_manager
        self.max_body_bytes = cp.settings.max_body_bytes
        # The stateless transport logs "Terminating session" at INFO for every request.
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)
        self._stack = AsyncExitStack()

    def wrap(self, inner: ASGIApp) -> ASGIApp:
        """An ASGI app sending `/mcp` here and everything else to `inner` (Quart)."""

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"].rstrip("/") == PATH:
                await self.handle(scope, receive, send)
            else:
                await inner(scope, receive, send)

        return asgi

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = Headers(scope=scope).get("authorization")
        try:
            if header is None:
                raise AuthenticationRequired(
                    "MCP needs an API token: send Authorization: Bearer <token> (create one with "
                    "`serverflow tokens create`).",
                    code="AUTH001",
                )
            principal = await token_principal(header)
        except ServerFlowError as exc:
            if exc.code == "AUTH002":  # a token nobody issued (or revoked): no organisation
                client = scope.get("client") or ("unknown", 0)
                await self.cp.refusals.note(
                    audit.INSTANCE,
                    "auth.token_refused",
                    exc.code,
                    actor="anonymous",
                    source=str(client[0]),
                    target=f"{scope.get('method')} {PATH}",
                )
            await self._refuse(scope, send, exc)
            return
        except (BaseORMException, OSError):
            log.exception("MCP authentication failed: database unreachable")
            await self._refuse(scope, send, DatabaseError())
            return
        if scope.get("method") == "POST":
            problem = self._content_type_problem(scope)
            if problem is not None:
                await self._refuse(scope, send, problem)
                return
            body = await self._read_body(receive)
            if body is None:
                await self._refuse(scope, send, BodyTooLarge())
                return
            receive = _replay(body, receive)
        token = CALLER.set(principal)
        try:
            await self.manager.handle_request(scope, receive, send)
        finally:
            CALLER.reset(token)

    def _content_type_problem(self, scope: Scope) -> ServerFlowError | None:
        """VAL004 for a body that is not JSON by its type (the SDK answers in plain text).

        Bodies that are not UTF-8 or not JSON are left to the SDK: a JSON-RPC parse error
        (-32700) is what an MCP client understands.
        """
        content_type = Headers(scope=scope).get("content-type", "")
        if content_type.lower().startswith("application/json"):
            return None
        return InvalidInput(
            "MCP takes JSON-RPC: send the body with Content-Type: application/json.",
            code="VAL004",
        )

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it exceeds `max_body_bytes` (declared or not)."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        return bytes(body)

    async def _refuse(self, scope: Scope, send: Send, error: ServerFlowError) -> None:
        log.warning(
            "%s %s %s -> %s %s",
            error.code,
            scope.get("method"),
            PATH,
            error.status,
            error.message,
            extra={"code": error.code, "status": error.status, "path": PATH},
        )
        body = json.dumps(error.as_dict()).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if error.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="serverflow"'))
        if isinstance(error, TooManyRequests):
            headers.append((b"retry-after", str(error.retry_after).encode()))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def start(self) -> None:
        await self._stack.enter_async_context(self.manager.run())

    async def stop(self) -> None:
        await self._stack.aclose()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body over again, then the real channel."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
