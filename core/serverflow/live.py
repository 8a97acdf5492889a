"""The browser's live channel: `GET /live` (WebSocket) pushes the organisation's events.

Signed-in dashboards only (the session cookie), from this control plane's own origin
(the Origin header must be the public URL or the Host the browser used: a page on
another site cannot open it with the user's cookie). Every event goes to the sockets of
its own organisation, never to another's. Deployment log lines are many, so a page gets
them only for the deployments it follows: it sends `{"follow": "<deployment id>"}` (and
`{"unfollow": ...}`). The session is checked again every half minute: signing out, an
expired session or a removed membership closes the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from quart import Response, websocket

from serverflow.auth import session_user
from serverflow.controlplane import current
from serverflow.events import LiveEvent
from serverflow.models import Membership, User, UserSession
from serverflow.tenancy import scoped

log = logging.getLogger(__name__)

RECHECK_S = 30.0
MAX_FOLLOWED = 20
CLOSE_SIGNED_OUT = 4401  # application close codes (4000-4999): the page goes to /login
CLOSE_NO_ACCESS = 4403
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port


def origin_allowed(origin: str | None, host: str | None, scheme: str, base_url: str) -> bool:
    """The page that opens the socket must come from this control plane."""
    if not origin:
        return False
    seen = _origin(origin)
    if seen is None:
        return False
    allowed = {_origin(base_url)}
    if host:
        allowed.add(_origin(f"{scheme}://{host}"))
    return seen in allowed


async def organisation_of(sess: UserSession, user: User) -> uuid.UUID | None:
    """The organisation the session works in (as the API decides it), or None."""
    async with scoped(user_id=user.id):
        memberships = await Membership.all().order_by("created_at")
    if not memberships:
        return None
    chosen = next(
        (m for m in memberships if m.organization_id == sess.current_org_id), memberships[0]
    )
    return chosen.organization_id


async def _still_allowed(session_id: uuid.UUID, user_id: uuid.UUID, org_id: uuid.UUID) -> bool:
    sess = await UserSession.get_or_none(id=session_id).prefetch_related("user")
    if sess is None or sess.expires_at <= datetime.now(UTC) or not sess.user.is_active:
        return False
    return await organisation_of(sess, sess.user) == org_id


def encode(event: LiveEvent) -> str:
    return json.dumps(
        {
            "kind": event.kind,
            "server_id": str(event.server_id) if event.server_id else None,
            "at": event.at.isoformat(),
            "data": event.data,
        },
        default=str,
        separators=(",", ":"),
    )


async def _read_commands(followed: set[str]) -> None:
    """What the page asks for: which deployments' log lines it wants."""
    while True:
        raw = await websocket.receive()
        try:
            message: Any = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if not isinstance(message, dict):
            continue
        for key in ("follow", "unfollow"):
            value = message.get(key)
            try:
                deployment = str(uuid.UUID(str(value))) if value else None
            except ValueError:
                deployment = None
            if deployment is None:
                continue
            if key == "follow" and len(followed) < MAX_FOLLOWED:
                followed.add(deployment)
            elif key == "unfollow":
                followed.discard(deployment)


async def channel() -> Response | None:
    """`GET /live`: the organisation's events as JSON text frames, as they happen."""
    cp = current()
    scheme = "https" if websocket.scheme in ("wss", "https") else "http"
    if not origin_allowed(
        websocket.headers.get("Origin"),
        websocket.headers.get("Host"),
        scheme,
        cp.settings.base_url,
    ):
        log.warning("live channel refused: origin %r", websocket.headers.get("Origin"))
        return Response("cross-origin live connections are refused", status=403)
    found = await session_user()
    if found is None:
        return Response("sign in first", status=401)
    sess, user = found
    org_id = await organisation_of(sess, user)
    if org_id is None:
        return Response("not a member of any organisation", status=403)

    followed: set[str] = set()
    async with cp.bus.subscribe() as queue:
        await websocket.accept()
        await websocket.send(json.dumps({"kind": "live.ready", "data": {}}))
        reader = asyncio.create_task(_read_commands(followed))
        checked = time.monotonic()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), RECHECK_S)
                except TimeoutError:
                    event = None
                if time.monotonic() - checked >= RECHECK_S:
                    checked = time.monotonic()
                    if not await _still_allowed(sess.id, user.id, org_id):
                        await websocket.close(CLOSE_SIGNED_OUT, "signed out")
                        return None
                if reader.done():  # the page went away
                    return None
                if event is None or event.organization_id != org_id:
                    continue
                if (
                    event.kind == "deployment.log"
                    and str(event.data.get("deployment_id")) not in followed
                ):
                    continue
                await websocket.send(encode(event))
        finally:
            reader.add_done_callback(_consume)
            reader.cancel()


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a closed socket is no error worth logging
