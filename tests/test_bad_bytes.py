"""Bad bytes on every route: a 400/413/415 with a stable code, never a 5xx, nothing changed.

Walks every unsafe route of the app (and `/mcp`, which is outside Quart's url_map), sends
each kind of bad body unauthenticated, with an owner token and with a signed-in session
plus its CSRF token, and checks the answer, the log and the database.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE

from serverflow.models import (
    ApiToken,
    App,
    Deployment,
    Event,
    LoginFailure,
    Membership,
    Organization,
    Plan,
    Server,
    User,
    UserSession,
)
from serverflow.tenancy import scoped
from tests.conftest import BOTH_DATABASES, ControlPlaneUnderTest, Tenant, sign_in

if TYPE_CHECKING:  # a Test* name at module level would be collected
    from quart.typing import TestClientProtocol

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# In every body: it must never reach a log line.
MARKER = "bad-bytes-marker-5d1c"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
# Routes that take a body without any user authentication.
PUBLIC = {"agents.register", "web.login", "web.logout"}


@dataclass(frozen=True)
class Bad:
    label: str
    body: bytes
    content_type: str | None
    api_code: str  # the answer of a JSON API route that takes a body
    form_code: str  # the answer of a dashboard form route


def _bodies(limit: int, csrf: str) -> list[Bad]:
    m = MARKER.encode()
    return [
        Bad("invalid UTF-8", b'{"name": "' + m + b'\xff\xfe"}', JSON, "VAL002", "VAL005"),
        Bad("invalid JSON", b'{"name": "' + m + b'", ', JSON, "VAL002", "VAL005"),
        Bad("nested too deep", b"[" * 100_000, JSON, "VAL002", "VAL005"),
        Bad("lone surrogate", b'{"name": "' + m + b'\\ud800"}', JSON, "VAL002", "VAL005"),
        Bad("JSON as text/plain", b'{"name": "' + m + b'"}', "text/plain", "VAL004", "VAL005"),
        Bad("JSON without a type", b'{"name": "' + m + b'"}', None, "VAL004", "VAL005"),
        Bad(
            "form with invalid UTF-8",
            f"csrf_token={csrf}&name={MARKER}".encode() + b"\xff",
            FORM,
            "VAL004",
            "VAL002",
        ),
        Bad(
            "form with an invalid %-escape",
            f"csrf_token={csrf}&name={MARKER}%FF".encode(),
            FORM,
            "VAL004",
            "VAL002",
        ),
        Bad("NUL in a JSON string", b'{"name": "' + m + b'\\u0000"}', JSON, "VAL002", "VAL005"),
        Bad(
            "NUL in a form field",
            f"csrf_token={csrf}&name={MARKER}%00".encode(),
            FORM,
            "VAL004",
            "VAL002",
        ),
        Bad("multipart without boundary", m, "multipart/form-data", "VAL004", "VAL002"),
        Bad("too large", b'{"name": "' + b"x" * limit + b'"}', JSON, "VAL003", "VAL003"),
    ]


STATUS = {"VAL002": 400, "VAL003": 413, "VAL004": 400, "VAL005": 415}


def _fill(rule: str) -> str:
    """A URL for a rule: random ids (nothing to destroy), plausible names elsewhere."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.endswith("_id"):
            return str(uuid.uuid4())
        return {"provider": "github", "action": "test.echo", "name": "no-such-plugin"}.get(
            name, "x"
        )

    return re.sub(r"<(?:\w+:)?(\w+)>", value, rule)


def _routes(cp: ControlPlaneUnderTest) -> list[tuple[str, str, str, bool]]:
    """(method, url, endpoint, takes a JSON body) for every unsafe HTTP route."""
    found = []
    for rule in cp.app.url_map.iter_rules():
        if rule.websocket:
            continue
        view = cp.app.view_functions[rule.endpoint]
        takes_json = hasattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE)
        for method in sorted((rule.methods or set()) & UNSAFE):
            found.append((method, _fill(rule.rule), rule.endpoint, takes_json))
    assert len(found) >= 25, "the route walk found too few routes"
    return found


VOLATILE = {"last_used_at", "last_seen_at"}  # using a token is not a change


def _rows(rows: list[dict[str, object]]) -> list[str]:
    return sorted(str({k: v for k, v in row.items() if k not in VOLATILE}) for row in rows)


async def _snapshot(tenant: Tenant) -> dict[str, object]:
    async with scoped(tenant.org.id):
        tenant_rows = {
            model.__name__: _rows(await model.all().values())
            for model in (Server, App, ApiToken, Membership, Deployment, Plan, Event)
        }
    return {
        **tenant_rows,
        "orgs": _rows(await Organization.all().values()),
        "users": _rows(await User.all().values()),
        "sessions": await UserSession.all().count(),
        "login failures": await LoginFailure.all().count(),
    }


async def _expect(
    client: TestClientProtocol,
    method: str,
    url: str,
    bad: Bad,
    headers: dict[str, str],
    expected: str | None,
    may_refuse_first: bool,
) -> str | None:
    """None if the answer is right, else what is wrong with it."""
    sent = dict(headers)
    if bad.content_type is not None:
        sent["Content-Type"] = bad.content_type
    response = await client.open(url, method=method, data=bad.body, headers=sent)
    status = response.status_code
    where = f"{method} {url} [{bad.label}]"
    text = await response.get_data(as_text=True)
    if status >= 500:
        return f"{where}: {status} {text[:200]}"
    is_api = url.startswith("/api/")
    allowed = {400, 401, 403, 404, 405, 413, 415} | (set() if is_api else {302, 303})
    if status not in allowed:
        return f"{where}: unexpected {status}"
    code = None
    if is_api:
        body = await response.get_json()
        if not isinstance(body, dict) or not re.fullmatch(r"[A-Z]+[0-9]{3}", body["error"]["code"]):
            return f"{where}: no stable JSON error code: {text[:200]}"
        code = body["error"]["code"]
        if MARKER in body["error"]["message"]:
            return f"{where}: the body is echoed back"
    elif status in STATUS.values() and "text/html" not in response.content_type:
        return f"{where}: a dashboard error is not the error page"
    if expected is None:
        return None
    if status == STATUS[expected] and (code is None or code == expected):
        return None
    if may_refuse_first and status in (401, 302, 303):
        return None
    return f"{where}: wanted {STATUS[expected]} {expected}, got {status} {code or text[:120]}"


@pytest.mark.parametrize("who", ["anonymous", "token", "session"])
async def test_bad_bodies_on_every_route(
    control_plane: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture, who: str
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    made = await client.post("/api/v1/servers", json={"name": "web-1"}, headers=tenant.auth())
    assert made.status_code == 201
    headers: dict[str, str] = {}
    csrf = "none"
    operator = await control_plane.operator(tenant)  # the owner, an instance operator too
    if who == "token":
        headers = operator  # every role check passes, the body is reached
    elif who == "session":
        csrf = await sign_in(client, tenant.owner.email)
        headers = {"X-CSRF-Token": csrf}
    before = await _snapshot(tenant)
    caplog.set_level(logging.INFO)

    problems = []
    bodies = _bodies(control_plane.settings.max_body_bytes, csrf)
    for method, url, endpoint, takes_json in _routes(control_plane):
        is_form = not url.startswith("/api/")
        for bad in bodies:
            if bad.api_code == "VAL003":
                expected: str | None = "VAL003"  # refused before any handler, on every route
            elif takes_json:
                expected = bad.api_code
            elif is_form:
                expected = bad.form_code
            else:
                expected = None  # no body taken (or a webhook: its signature comes first)
            signed_in = who == "session" if is_form else who != "anonymous"
            authenticated = signed_in or endpoint in PUBLIC or bad.api_code == "VAL003"
            problem = await _expect(
                client, method, url, bad, headers, expected, may_refuse_first=not authenticated
            )
            if problem:
                problems.append(problem)

    assert not problems, "\n".join(problems[:40])
    assert await _snapshot(tenant) == before
    assert MARKER not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"


@pytest.mark.parametrize("authenticated", [False, True])
async def test_bad_bodies_on_mcp(
    control_plane: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture, authenticated: bool
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    caplog.set_level(logging.INFO)
    base = {"Accept": "application/json, text/event-stream"}
    headers = {**base, **tenant.auth()} if authenticated else base
    before = await _snapshot(tenant)
    for bad in _bodies(control_plane.settings.max_body_bytes, "none"):
        sent = dict(headers)
        if bad.content_type is not None:
            sent["Content-Type"] = bad.content_type
        response = await client.post("/mcp", data=bad.body, headers=sent)
        body = await response.get_json()
        if not authenticated:
            assert response.status_code == 401, bad.label
            assert body["error"]["code"] == "AUTH001"
        elif bad.content_type != JSON:
            assert (response.status_code, body["error"]["code"]) == (400, "VAL004"), bad.label
        elif bad.api_code == "VAL003":
            assert (response.status_code, body["error"]["code"]) == (413, "VAL003")
        elif bad.label == "NUL in a JSON string":
            # Valid JSON, but no JSON-RPC request: the SDK's invalid-request/params error.
            assert response.status_code == 400, bad.label
            assert body["error"]["code"] in (-32600, -32602), bad.label
        else:
            # Not UTF-8 or not JSON: the JSON-RPC parse error an MCP client understands.
            assert response.status_code == 400, bad.label
            assert body["error"]["code"] == -32700, bad.label
    assert await _snapshot(tenant) == before
    assert MARKER not in caplog.text


async def test_signed_webhook_with_bad_bytes_is_refused(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    await client.post("/api/v1/servers", json={"name": "web-1"}, headers=tenant.auth())
    app = {"name": "shop", "servers": ["web-1"], "repo": "https://git.example/shop.git"}
    assert (await client.post("/api/v1/apps", json=app, headers=tenant.auth())).status_code == 201
    hook = await (await client.get("/api/v1/apps/shop/webhook", headers=tenant.auth())).get_json()
    url = "/api/v1/hooks/" + hook["github_url"].split("/api/v1/hooks/", 1)[1]
    before = await _snapshot(tenant)
    for body in (b'{"ref": "\xff"}', b'{"ref": ', b"[" * 100_000):
        signature = "sha256=" + hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
        response = await client.post(
            url,
            data=body,
            headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": signature},
        )
        assert response.status_code == 400
        assert (await response.get_json())["error"]["code"] == "HOOK002"
    assert await _snapshot(tenant) == before


@BOTH_DATABASES
@pytest.mark.parametrize(
    "body",
    [
        {"name": "web-1", "description": "a\u0000b"},
        {"name": "web-1", "description": "ok", "\u0000": "x"},
    ],
    ids=["in-a-value", "in-a-key"],
)
async def test_a_nul_character_is_refused_not_stored(
    control_plane: ControlPlaneUnderTest, body: dict[str, str]
) -> None:
    """PostgreSQL cannot store NUL in text: refused as bad input on both databases alike."""
    tenant = await control_plane.tenant("Acme")
    answer = await control_plane.client().post("/api/v1/servers", headers=tenant.auth(), json=body)
    assert answer.status_code == 400, await answer.get_data(as_text=True)
    assert (await answer.get_json())["error"]["code"] == "VAL002"
    async with scoped(tenant.org.id):
        assert await Server.all().count() == 0
