"""Bad input gets its error code, is logged without secrets, and changes nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from serverflow.controlplane import EXTENSION, ControlPlane
from serverflow.models import ApiToken, LoginFailure, Role, Server, User, UserSession
from serverflow.tenancy import scoped
from tests.conftest import BOTH_DATABASES, PASSWORD, ControlPlaneUnderTest, Tenant


async def _snapshot(tenant: Tenant) -> dict[str, object]:
    async with scoped(tenant.org.id):
        servers = sorted((s.name, s.description) for s in await Server.all())
        tokens = sorted((t.name, t.role, str(t.revoked_at)) for t in await ApiToken.all())
    return {
        "servers": servers,
        "tokens": tokens,
        "users": await User.all().count(),
        "sessions": await UserSession.all().count(),
    }


JSON = "application/json"
BAD_BODIES = [
    ("malformed JSON", b'{"name": "web-1",', "application/json", "VAL002", 400),
    ("wrong type", b'{"name": 42}', "application/json", "VAL001", 400),
    (
        "wrong type (bool as str)",
        b'{"name": "ok", "description": true}',
        "application/json",
        "VAL001",
        400,
    ),
    ("unknown field", b'{"name": "web-1", "owner": "root"}', "application/json", "VAL001", 400),
    ("invalid name", b'{"name": "Web 1!"}', "application/json", "VAL001", 400),
    ("not an object", b'["web-1"]', "application/json", "VAL001", 400),
    ("not JSON at all", b"name=web-1", "application/x-www-form-urlencoded", "VAL004", 400),
    # I-JSON (RFC 7493): no number a double cannot hold (the audit log hashes each body).
    ("integer beyond 2**53", b'{"name": "web-1", "n": 9007199254740992}', JSON, "VAL002", 400),
    ("overflowing exponent", b'{"name": "web-1", "n": 1e400}', JSON, "VAL002", 400),
    ("NaN", b'{"name": "web-1", "n": NaN}', JSON, "VAL002", 400),
]


@BOTH_DATABASES
@pytest.mark.parametrize(
    ("label", "body", "ctype", "code", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_bad_bodies_are_refused_and_change_nothing(
    control_plane: ControlPlaneUnderTest,
    caplog: pytest.LogCaptureFixture,
    label: str,
    body: bytes,
    ctype: str,
    code: str,
    status: int,
) -> None:
    tenant = await control_plane.tenant("Acme")
    before = await _snapshot(tenant)
    caplog.set_level(logging.INFO)
    response = await control_plane.client().post(
        "/api/v1/servers", data=body, headers={**tenant.auth(), "Content-Type": ctype}
    )
    assert response.status_code == status
    error = (await response.get_json())["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in error["message"]
    assert await _snapshot(tenant) == before
    logged = [r for r in caplog.records if getattr(r, "code", None) == code]
    assert logged, f"{code} was not logged"
    assert tenant.tokens[Role.OWNER] not in caplog.text


async def test_validation_errors_name_the_field_but_never_echo_values(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    secret = "s3cr3t-value-that-must-not-echo"
    response = await control_plane.client().post(
        "/api/v1/servers",
        json={"name": "ok", "description": 5, "password": secret},
        headers=tenant.auth(),
    )
    body = await response.get_data(as_text=True)
    assert response.status_code == 400
    fields = {d["field"] for d in (await response.get_json())["error"]["details"]}
    assert {"description", "password"} <= fields
    assert secret not in body


@BOTH_DATABASES
async def test_oversized_body_is_refused(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    before = await _snapshot(tenant)
    huge = b'{"name": "web-1", "description": "' + b"x" * 2_000_000 + b'"}'
    response = await control_plane.client().post(
        "/api/v1/servers", data=huge, headers={**tenant.auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert (await response.get_json())["error"]["code"] == "VAL003"
    assert await _snapshot(tenant) == before


@BOTH_DATABASES
async def test_a_log_position_beyond_the_column_is_refused(
    control_plane: ControlPlaneUnderTest,
) -> None:
    """`after` is compared with a 32-bit column: past it SQLite overflowed (500)."""
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    made = await client.post("/api/v1/servers", json={"name": "web-1"}, headers=tenant.auth())
    assert made.status_code == 201
    app = await client.post(
        "/api/v1/apps",
        json={"name": "shop", "repo": "https://git.example/shop.git", "servers": ["web-1"]},
        headers=tenant.auth(),
    )
    assert app.status_code == 201, await app.get_data(as_text=True)
    app_id = (await app.get_json())["id"]
    deploy = await client.post(f"/api/v1/apps/{app_id}/deploy", json={}, headers=tenant.auth())
    assert deploy.status_code == 202
    dep_id = (await deploy.get_json())["deployments"][0]["id"]
    for after, status in ((2**31 - 1, 200), (2**31, 400), (4816789795684362485760, 400)):
        response = await client.get(
            f"/api/v1/deployments/{dep_id}/logs?after={after}", headers=tenant.auth()
        )
        assert response.status_code == status, (after, await response.get_data(as_text=True))


BAD_TOKENS = [
    "not-a-token",
    "Bearer",
    "Bearer sf_nothex_abc",
    "Bearer sf_00000000000000000000000000000000_" + "A" * 43,
    "Basic YWRtaW46YWRtaW4=",
]


@BOTH_DATABASES
@pytest.mark.parametrize("header", BAD_TOKENS)
async def test_bad_tokens_are_refused(control_plane: ControlPlaneUnderTest, header: str) -> None:
    tenant = await control_plane.tenant("Acme")
    before = await _snapshot(tenant)
    client = control_plane.client()
    for method, url, kwargs in [
        ("GET", "/api/v1/servers", {}),
        ("POST", "/api/v1/servers", {"json": {"name": "x"}}),
    ]:
        response = await client.open(
            url, method=method, headers={"Authorization": header}, **kwargs
        )
        assert response.status_code == 401
        assert (await response.get_json())["error"]["code"] == "AUTH002"
    assert await _snapshot(tenant) == before


@BOTH_DATABASES
async def test_revoked_token_is_refused(
    control_plane: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    created = await client.post(
        "/api/v1/tokens", json={"name": "deploy-bot", "role": "member"}, headers=tenant.auth()
    )
    assert created.status_code == 201
    body = await created.get_json()
    headers = {"Authorization": f"Bearer {body['token']}"}
    assert (await client.get("/api/v1/servers", headers=headers)).status_code == 200
    caplog.set_level(logging.INFO)
    revoked = await client.delete(f"/api/v1/tokens/{body['id']}", headers=tenant.auth())
    assert (await revoked.get_json())["revoked_at"] is not None
    before = await _snapshot(tenant)
    response = await client.post("/api/v1/servers", json={"name": "x"}, headers=headers)
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "AUTH002"
    assert await _snapshot(tenant) == before
    assert body["token"] not in caplog.text


@BOTH_DATABASES
async def test_wrong_password_is_refused_then_throttled(
    control_plane: ControlPlaneUnderTest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    page = await (await client.get("/login")).get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    caplog.set_level(logging.INFO)
    wrong = "hunter2-wrong-password"
    limit = control_plane.settings.login_max_failures
    cp: ControlPlane = control_plane.app.extensions[EXTENSION]
    now = datetime.now(UTC)
    cp.clock = lambda: now  # no time passes
    for _ in range(limit):
        response = await client.post(
            "/login", form={"csrf_token": csrf, "email": tenant.owner.email, "password": wrong}
        )
        assert response.status_code == 401
        assert 'data-code="AUTH003"' in await response.get_data(as_text=True)
    # Throttled now from this address, even with the right password.
    response = await client.post(
        "/login", form={"csrf_token": csrf, "email": tenant.owner.email, "password": PASSWORD}
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert 'data-code="AUTH005"' in await response.get_data(as_text=True)
    assert await UserSession.all().count() == 0
    assert await LoginFailure.filter(email=tenant.owner.email).count() == limit
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    # Unknown emails are refused the same way, without revealing whether they exist.
    response = await client.post(
        "/login", form={"csrf_token": csrf, "email": "nobody@x.test", "password": wrong}
    )
    assert response.status_code == 401
    assert 'data-code="AUTH003"' in await response.get_data(as_text=True)


async def test_unknown_route_and_method(control_plane: ControlPlaneUnderTest) -> None:
    client = control_plane.client()
    missing = await client.get("/api/v1/nope")
    assert missing.status_code == 404
    assert (await missing.get_json())["error"]["code"] == "GEN404"
    wrong = await client.put("/api/v1/servers", json={})
    assert wrong.status_code == 405
    assert (await wrong.get_json())["error"]["code"] == "GEN405"


async def test_non_uuid_ids_are_not_found(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    response = await control_plane.client().get(
        "/api/v1/servers/../../etc/passwd", headers=tenant.auth()
    )
    assert response.status_code == 404
    response = await control_plane.client().get("/api/v1/servers/not-a-uuid", headers=tenant.auth())
    assert (await response.get_json())["error"]["code"] == "SRV001"
