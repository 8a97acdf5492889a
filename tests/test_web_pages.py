# ruff: noqa: RUF001 (French typography: the apostrophe is U+2019)
"""Dashboard pages through the HTTP interface: content, roles, languages, escaping, /live.

The real-browser tests are in test_web_browser.py; these run in-process and fast.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from quart.testing.connections import WebsocketResponseError

from serverflow.controlplane import EXTENSION, ControlPlane
from serverflow.events import LiveEvent
from serverflow.models import Role, User
from tests.conftest import ControlPlaneUnderTest, Tenant, sign_in

ORIGIN = {"Origin": "http://localhost"}


async def _server(cp: ControlPlaneUnderTest, tenant: Tenant, **extra: str) -> dict[str, object]:
    made = await cp.client().post(
        "/api/v1/servers", json={"name": "web-1", **extra}, headers=tenant.auth()
    )
    assert made.status_code == 201, await made.get_data(as_text=True)
    body: dict[str, object] = await made.get_json()
    return body


async def _app(cp: ControlPlaneUnderTest, tenant: Tenant, server: str) -> dict[str, object]:
    made = await cp.client().post(
        "/api/v1/apps",
        json={
            "name": "shop",
            "repo": "https://git.example/shop.git",
            "servers": [server],
            "domains": ["shop.example.test"],
            "env": {"DATABASE_PASSWORD": "s3cret-value"},
        },
        headers=tenant.auth(),
    )
    assert made.status_code == 201, await made.get_data(as_text=True)
    body: dict[str, object] = await made.get_json()
    return body


async def _page(client: object, path: str, **headers: str) -> str:
    response = await client.get(path, headers=headers)  # type: ignore[attr-defined]
    assert response.status_code == 200, (path, response.status_code)
    text: str = await response.get_data(as_text=True)
    return text


async def test_every_page_renders_for_an_owner(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    server = await _server(control_plane, tenant)
    app = await _app(control_plane, tenant, str(server["id"]))
    await control_plane.operator(tenant)  # the plugin buttons are an operator's
    client = control_plane.client()
    await sign_in(client, tenant.owner.email)

    overview = await _page(client, "/")
    assert "Servers" in overview and "web-1" in overview and "shop" in overview
    assert "Waiting for the agent" in overview and 'href="/servers/new"' in overview
    detail = await _page(client, f"/servers/{server['id']}")
    assert 'id="metrics-chart"' in detail and 'id="delete-server"' in detail
    page = await _page(client, f"/apps/{app['id']}")
    assert 'id="deploy"' in page and 'id="rollback"' in page and 'id="confirm"' in page
    assert "DATABASE_PASSWORD" in page and "s3cret-value" not in page  # env masked
    assert 'id="webhook-secret"' in page  # owners see the webhook secret
    assert "https://shop.example.test" in page
    assert 'name="runtime"' in await _page(client, "/apps/new")
    assert 'id="server-form"' in await _page(client, "/servers/new")
    assert "Events" in await _page(client, "/events")
    assert 'id="audit-filter"' in await _page(client, "/audit")
    assert 'id="token-form"' in await _page(client, "/settings")
    plugins = await _page(client, "/plugins")
    assert "runtime_pm2" in plugins and 'data-plugin-action="disable"' in plugins

    # The stylesheet and script the pages link to are served.
    for asset in re.findall(r'(?:href|src)="(/[^"]+\.(?:css|js))"', overview):
        served = await client.get(asset)
        assert served.status_code == 200, asset
    assert len(re.findall(r'(?:href|src)="(/[^"]+\.(?:css|js))"', overview)) == 2

    response = await client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_pages_need_a_session_and_return_after_sign_in(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    response = await client.get("/events")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/events"
    page = await _page(client, "/login?next=/events")
    csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    back = await client.post(
        "/login",
        form={
            "csrf_token": csrf,
            "email": tenant.owner.email,
            "password": "correct horse battery staple",
            "next": "/events",
        },
    )
    assert back.headers["Location"] == "/events"
    # Only local paths: never a redirect to another site.
    await client.post("/logout", form={"csrf_token": csrf})
    elsewhere = await client.post(
        "/login",
        form={
            "csrf_token": csrf,
            "email": tenant.owner.email,
            "password": "correct horse battery staple",
            "next": "//evil.example/",
        },
    )
    assert elsewhere.headers["Location"] == "/"


async def test_a_viewer_sees_everything_but_no_buttons_and_the_api_refuses(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    server = await _server(control_plane, tenant)
    app = await _app(control_plane, tenant, str(server["id"]))
    viewer = await control_plane.user(tenant, Role.VIEWER)
    client = control_plane.client()
    csrf = await sign_in(client, viewer.email)

    overview = await _page(client, "/")
    assert "web-1" in overview and "shop" in overview
    assert 'href="/servers/new"' not in overview and 'href="/apps/new"' not in overview
    page = await _page(client, f"/apps/{app['id']}")
    assert "shop" in page
    for button in ('id="deploy"', 'id="rollback"', 'id="delete-app"', 'id="webhook-secret"'):
        assert button not in page, button
    detail = await _page(client, f"/servers/{server['id']}")
    assert 'id="delete-server"' not in detail and 'id="mode-form"' not in detail
    plugins = await _page(client, "/plugins")
    assert "runtime_pm2" in plugins
    assert "data-plugin-action" not in plugins and "data-install" not in plugins
    settings = await _page(client, "/settings")
    assert 'id="token-form"' not in settings and 'id="language-form"' in settings
    assert (await client.get("/servers/new")).status_code == 403

    headers = {"X-CSRF-Token": csrf}
    for method, path in (
        ("POST", f"/api/v1/apps/{app['id']}/deploy"),
        ("POST", f"/api/v1/apps/{app['id']}/rollback"),
        ("DELETE", f"/api/v1/apps/{app['id']}"),
        ("DELETE", f"/api/v1/servers/{server['id']}"),
        ("POST", "/api/v1/plugins/runtime_pm2/disable"),
        ("POST", "/api/v1/plugins/install"),
    ):
        body = {} if method == "POST" and "install" not in path else {"name": "x"}
        refused = await client.open(
            path, method=method, json=body if method == "POST" else None, headers=headers
        )
        assert refused.status_code == 403, (method, path)
        wanted = "AUTH007" if "/plugins/" in path else "AUTH004"  # instance operators only
        assert (await refused.get_json())["error"]["code"] == wanted


async def test_members_see_deploy_but_not_the_webhook_secret(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    server = await _server(control_plane, tenant)
    app = await _app(control_plane, tenant, str(server["id"]))
    member = await control_plane.user(tenant, Role.MEMBER)
    client = control_plane.client()
    await sign_in(client, member.email)
    page = await _page(client, f"/apps/{app['id']}")
    assert 'id="deploy"' in page and 'id="delete-app"' not in page
    assert 'id="webhook-secret"' not in page and "/hooks/" not in page


async def test_user_data_is_escaped(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme <b>Corp</b>")
    server = await _server(control_plane, tenant, description='<script>alert("x")</script>')
    client = control_plane.client()
    await sign_in(client, tenant.owner.email)
    detail = await _page(client, f"/servers/{server['id']}")
    assert "<script>alert" not in detail
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in detail
    assert "<b>Corp</b>" not in await _page(client, "/")


async def test_language_from_browser_then_from_the_users_setting(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    login = await _page(client, "/login", **{"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    assert '<html lang="fr">' in login and "Se connecter" in login
    assert "Sign in</h1>" in await _page(client, "/login", **{"Accept-Language": "de"})

    csrf = await sign_in(client, tenant.owner.email)
    french = {"Accept-Language": "fr"}
    overview = await _page(client, "/", **french)
    assert "Serveurs" in overview and "En attente de l’agent" in overview
    config = json.loads(re.search(r'id="sf-config">(.*?)</script>', overview).group(1))  # type: ignore[union-attr]
    assert config["locale"] == "fr"
    assert config["messages"]["Online"] == "En ligne"
    assert config["errors"]["SRV002"].startswith("Un serveur")

    # The user's setting wins over the browser's.
    assert (await client.post("/settings/language", form={"locale": "fr"})).status_code == 403
    saved = await client.post("/settings/language", form={"csrf_token": csrf, "locale": "en"})
    assert saved.status_code == 302
    assert "Servers" in await _page(client, "/", **french)
    await client.post("/settings/language", form={"csrf_token": csrf, "locale": "fr"})
    async with control_plane.app.app_context():
        user = await User.get(id=tenant.owner.id)
    assert user.locale == "fr"
    page = await _page(client, "/", **{"Accept-Language": "en"})
    assert '<html lang="fr">' in page and "Vue d’ensemble" in page
    bad = await client.post("/settings/language", form={"csrf_token": csrf, "locale": "xx"})
    assert bad.status_code == 400


async def test_errors_are_shown_in_the_readers_language(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    await sign_in(client, tenant.owner.email)
    missing = await client.get(f"/servers/{uuid.uuid4()}", headers={"Accept-Language": "fr"})
    assert missing.status_code == 404
    text = await missing.get_data(as_text=True)
    assert 'data-code="SRV001"' in text and "Serveur introuvable." in text
    english = await client.get(f"/servers/{uuid.uuid4()}")
    assert "not found" in await english.get_data(as_text=True)


# -- the live channel ------------------------------------------------------------------


def _cp(cp: ControlPlaneUnderTest) -> ControlPlane:
    found: ControlPlane = cp.app.extensions[EXTENSION]
    return found


async def _receive(ws: object, timeout: float = 5) -> dict[str, object]:
    raw = await asyncio.wait_for(ws.receive(), timeout)  # type: ignore[attr-defined]
    message: dict[str, object] = json.loads(raw)
    return message


async def test_live_channel_sends_only_the_own_organisations_events(
    control_plane: ControlPlaneUnderTest,
) -> None:
    acme = await control_plane.tenant("Acme")
    other = await control_plane.tenant("Other")
    client = control_plane.client()
    await sign_in(client, acme.owner.email)
    bus = _cp(control_plane).bus
    deployment = str(uuid.uuid4())
    async with client.websocket("/live", headers=ORIGIN) as ws:
        assert (await _receive(ws))["kind"] == "live.ready"
        bus.publish(LiveEvent("server.online", other.org.id, uuid.uuid4(), {"name": "theirs"}))
        bus.publish(LiveEvent("deployment.log", acme.org.id, None, {"deployment_id": deployment}))
        bus.publish(LiveEvent("server.online", acme.org.id, uuid.uuid4(), {"name": "ours"}))
        first = await _receive(ws)
        assert first["kind"] == "server.online" and first["data"] == {"name": "ours"}
        # Log lines only for a followed deployment.
        await ws.send(json.dumps({"follow": deployment}))
        await asyncio.sleep(0.1)
        bus.publish(LiveEvent("deployment.log", other.org.id, None, {"deployment_id": deployment}))
        bus.publish(
            LiveEvent("deployment.log", acme.org.id, None, {"deployment_id": deployment, "seq": 1})
        )
        line = await _receive(ws)
        assert line["kind"] == "deployment.log" and line["data"]["seq"] == 1  # type: ignore[index]


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "", "http://localhost.evil.example"]
)
async def test_live_channel_refuses_other_origins(
    control_plane: ControlPlaneUnderTest, origin: str
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    await sign_in(client, tenant.owner.email)
    headers = {"Origin": origin} if origin else {}
    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket("/live", headers=headers) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 403


async def test_live_channel_needs_a_session(control_plane: ControlPlaneUnderTest) -> None:
    await control_plane.tenant("Acme")
    client = control_plane.client()
    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket("/live", headers=ORIGIN) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 401


async def test_members_edit_an_apps_settings_from_its_page(
    control_plane: ControlPlaneUnderTest,
) -> None:
    from serverflow.models import App
    from serverflow.tenancy import scoped

    tenant = await control_plane.tenant("Acme")
    server = await _server(control_plane, tenant)
    app = await _app(control_plane, tenant, str(server["id"]))
    async with scoped(tenant.org.id):  # what the last deploy of the default branch found
        await App.filter(name="shop").update(default_branch="master")
    member = await control_plane.user(tenant, Role.MEMBER)
    client = control_plane.client()
    csrf = await sign_in(client, member.email)
    page = await _page(client, f"/apps/{app['id']}")
    assert 'id="app-edit-form"' in page and "default (master)" in page
    assert 'name="branch" autocomplete="off" value=""' in page

    # The form sends what the dashboard's script sends: a PATCH with the session's token.
    body = {"branch": "stable", "start": "node server.js --port 3000", "health_timeout_s": 20}
    forged = await client.patch(f"/api/v1/apps/{app['id']}", json=body)
    assert forged.status_code == 403
    assert (await forged.get_json())["error"]["code"] == "AUTH006"
    saved = await client.patch(
        f"/api/v1/apps/{app['id']}", json=body, headers={"X-CSRF-Token": csrf}
    )
    assert saved.status_code == 200, await saved.get_data(as_text=True)
    page = await _page(client, f"/apps/{app['id']}?saved=1")
    assert 'id="app-edit-saved"' in page
    assert 'value="stable"' in page and 'value="node server.js --port 3000"' in page
    assert 'name="health_timeout_s" type="number" min="1" max="1800" required value="20"' in page

    viewer = await control_plane.user(tenant, Role.VIEWER)
    other = control_plane.client()
    await sign_in(other, viewer.email)
    assert 'id="app-edit-form"' not in await _page(other, f"/apps/{app['id']}")


async def test_the_settings_form_speaks_french(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    server = await _server(control_plane, tenant)
    app = await _app(control_plane, tenant, str(server["id"]))
    client = control_plane.client()
    await sign_in(client, tenant.owner.email)
    page = await _page(client, f"/apps/{app['id']}", **{"Accept-Language": "fr"})
    assert "Modifier les réglages" in page and "Enregistrer les réglages" in page
    assert "celle par défaut du dépôt" in page
