"""Sessions, CSRF, roles and API tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from serverflow.models import ApiToken, Role, Server, UserSession
from serverflow.tenancy import scoped
from serverflow.tokens import hash_token
from tests.conftest import ControlPlaneUnderTest, sign_in


async def test_session_login_logout_and_csrf(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    assert (await client.get("/")).status_code == 302  # to /login
    csrf = await sign_in(client, tenant.owner.email)
    page = await (await client.get("/")).get_data(as_text=True)
    assert tenant.owner.email in page and "Acme" in page

    # Cookie-authenticated API writes need the CSRF header.
    refused = await client.post("/api/v1/servers", json={"name": "web-1"})
    assert refused.status_code == 403
    assert (await refused.get_json())["error"]["code"] == "AUTH006"
    ok = await client.post(
        "/api/v1/servers", json={"name": "web-1"}, headers={"X-CSRF-Token": csrf}
    )
    assert ok.status_code == 201
    async with scoped(tenant.org.id):
        assert await Server.filter(name="web-1").count() == 1

    # A form post without the CSRF field is refused and does not sign out.
    assert (await client.post("/logout", form={})).status_code == 403
    assert (await client.get("/api/v1/me")).status_code == 200
    assert (await client.post("/logout", form={"csrf_token": csrf})).status_code == 302
    assert await UserSession.all().count() == 0
    after = await client.get("/api/v1/me")
    assert after.status_code == 401
    assert (await after.get_json())["error"]["code"] == "AUTH001"


async def test_login_form_requires_csrf(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    response = await client.post(
        "/login", form={"email": tenant.owner.email, "password": "correct horse battery staple"}
    )
    assert response.status_code == 403
    assert await UserSession.all().count() == 0


async def test_session_cookie_is_stored_hashed(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    await sign_in(client, tenant.owner.email)
    cookie = next(c for c in client.cookie_jar if c.name == "serverflow_session")
    sessions = await UserSession.all()
    assert len(sessions) == 1
    assert cookie.value not in sessions[0].token_hash
    assert cookie.has_nonstandard_attr("HttpOnly")


async def test_roles_are_enforced(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    viewer = tenant.auth(Role.VIEWER)
    assert (await client.get("/api/v1/servers", headers=viewer)).status_code == 200
    denied = await client.post("/api/v1/servers", json={"name": "web-1"}, headers=viewer)
    assert denied.status_code == 403
    assert (await denied.get_json())["error"]["code"] == "AUTH004"
    created = await client.post(
        "/api/v1/servers", json={"name": "web-1"}, headers=tenant.auth(Role.MEMBER)
    )
    assert created.status_code == 201
    server_id = (await created.get_json())["id"]
    # Members cannot delete servers or manage tokens; admins can.
    assert (
        await client.delete(f"/api/v1/servers/{server_id}", headers=tenant.auth(Role.MEMBER))
    ).status_code == 403
    assert (await client.get("/api/v1/tokens", headers=tenant.auth(Role.MEMBER))).status_code == 403
    assert (
        await client.delete(f"/api/v1/servers/{server_id}", headers=tenant.auth(Role.ADMIN))
    ).status_code == 204
    async with scoped(tenant.org.id):
        assert await Server.all().count() == 0


async def test_a_token_cannot_outrank_its_creator(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    response = await client.post(
        "/api/v1/tokens", json={"name": "x", "role": "owner"}, headers=tenant.auth(Role.ADMIN)
    )
    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "TOK002"
    async with scoped(tenant.org.id):
        assert await ApiToken.filter(name="x").count() == 0


async def test_tokens_are_shown_once_and_stored_hashed(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    created = await (
        await client.post(
            "/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=tenant.auth()
        )
    ).get_json()
    value = created["token"]
    assert value.startswith(f"sf_{tenant.org.id.hex}_")
    listing = await (await client.get("/api/v1/tokens", headers=tenant.auth())).get_data(
        as_text=True
    )
    assert value not in listing and created["id"] in listing
    one = await (
        await client.get(f"/api/v1/tokens/{created['id']}", headers=tenant.auth())
    ).get_json()
    assert "token" not in one
    async with scoped(tenant.org.id):
        row = await ApiToken.get(id=created["id"])
    assert row.token_hash == hash_token(value)
    me = await (
        await client.get("/api/v1/me", headers={"Authorization": f"Bearer {value}"})
    ).get_json()
    assert me["role"] == "viewer" and me["kind"] == "token"


async def test_expired_token_is_refused(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    created = await (
        await client.post(
            "/api/v1/tokens", json={"name": "short", "expires_in_days": 1}, headers=tenant.auth()
        )
    ).get_json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 200
    async with scoped(tenant.org.id):
        await ApiToken.filter(id=created["id"]).update(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
    response = await client.get("/api/v1/me", headers=headers)
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "AUTH002"


async def test_members_keep_an_owner(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    members = await (await client.get("/api/v1/members", headers=tenant.auth())).get_json()
    owner = next(m for m in members["members"] if m["role"] == "owner")
    demote = await client.patch(
        f"/api/v1/members/{owner['id']}", json={"role": "viewer"}, headers=tenant.auth()
    )
    assert demote.status_code == 409
    assert (await demote.get_json())["error"]["code"] == "MEM002"
    remove = await client.delete(f"/api/v1/members/{owner['id']}", headers=tenant.auth())
    assert remove.status_code == 409
    # An admin cannot promote anyone to owner.
    user = await control_plane.user(tenant, Role.MEMBER)
    mid = next(
        m["id"]
        for m in (await (await client.get("/api/v1/members", headers=tenant.auth())).get_json())[
            "members"
        ]
        if m["user_id"] == str(user.id)
    )
    promote = await client.patch(
        f"/api/v1/members/{mid}", json={"role": "owner"}, headers=tenant.auth(Role.ADMIN)
    )
    assert promote.status_code == 403


async def test_add_member_by_email(control_plane: ControlPlaneUnderTest) -> None:
    a = await control_plane.tenant("Acme")
    b = await control_plane.tenant("Bravo")
    client = control_plane.client()
    missing = await client.post("/api/v1/members", json={"email": "ghost@x.test"}, headers=a.auth())
    assert (await missing.get_json())["error"]["code"] == "MEM003"
    added = await client.post(
        "/api/v1/members", json={"email": b.owner.email, "role": "viewer"}, headers=a.auth()
    )
    assert added.status_code == 201
    again = await client.post("/api/v1/members", json={"email": b.owner.email}, headers=a.auth())
    assert (await again.get_json())["error"]["code"] == "MEM004"


async def test_change_password_signs_out_sessions(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    csrf = await sign_in(client, tenant.owner.email)
    headers = {"X-CSRF-Token": csrf}
    wrong = await client.post(
        "/api/v1/me/password",
        headers=headers,
        json={"current_password": "nope", "new_password": "x" * 12},
    )
    assert (await wrong.get_json())["error"]["code"] == "AUTH003"
    weak = await client.post(
        "/api/v1/me/password",
        headers=headers,
        json={"current_password": "correct horse battery staple", "new_password": "short"},
    )
    assert weak.status_code == 400
    ok = await client.post(
        "/api/v1/me/password",
        headers=headers,
        json={
            "current_password": "correct horse battery staple",
            "new_password": "a much better passphrase",
        },
    )
    assert ok.status_code == 204
    assert (await client.get("/api/v1/me")).status_code == 401
    await sign_in(control_plane.client(), tenant.owner.email, "a much better passphrase")
    # Tokens have no password to change.
    by_token = await client.post(
        "/api/v1/me/password",
        headers=tenant.auth(),
        json={"current_password": "x", "new_password": "y" * 12},
    )
    assert by_token.status_code == 403


async def test_rate_limit_per_token(db_url: str, tmp_path: Path) -> None:
    from serverflow import db
    from serverflow.app import create_app
    from serverflow.plugins import Plugins
    from tests.conftest import ControlPlaneUnderTest, make_settings

    settings = make_settings(tmp_path, db_url, api_rate_per_minute=5)
    await db.migrate(db_url)
    app = create_app(settings, plugins=Plugins(load=False))
    async with app.test_app() as test_app:
        cp = ControlPlaneUnderTest(app=test_app.app, settings=settings, db_url=db_url)
        tenant = await cp.tenant("Acme")
        client = cp.client()
        for _ in range(5):
            assert (await client.get("/api/v1/me", headers=tenant.auth())).status_code == 200
        limited = await client.get("/api/v1/me", headers=tenant.auth())
        assert limited.status_code == 429
        assert (await limited.get_json())["error"]["code"] == "RATE001"
        assert int(limited.headers["Retry-After"]) >= 1
        # Another token has its own budget.
        other = await client.get("/api/v1/me", headers=tenant.auth(Role.VIEWER))
        assert other.status_code == 200
