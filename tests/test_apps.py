"""Apps through the API: validation, secrets kept masked, webhooks verified."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest

from serverflow.models import App, Deployment, DeploymentStatus, Role
from serverflow.tenancy import scoped
from tests.conftest import BOTH_DATABASES, ControlPlaneUnderTest, Tenant


async def _server(cp: ControlPlaneUnderTest, tenant: Tenant, name: str = "web-1") -> str:
    made = await cp.client().post("/api/v1/servers", json={"name": name}, headers=tenant.auth())
    return str((await made.get_json())["id"])


def _app(**extra: object) -> dict[str, object]:
    return {
        "name": "shop",
        "servers": ["web-1"],
        "repo": "https://git.example/shop.git",
        "domains": ["shop.example.test"],
        "env": {"SECRET_KEY": "s3cr3t-value"},
        **extra,
    }


@BOTH_DATABASES
async def test_create_app_keeps_env_encrypted_and_masked(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    made = await client.post(
        "/api/v1/apps",
        headers=tenant.auth(Role.MEMBER),
        json=_app(build=["npm ci", "npm run build"], start="node server.js"),
    )
    assert made.status_code == 201, await made.get_data(as_text=True)
    app = await made.get_json()
    assert app["env"] == {"SECRET_KEY": "********"}
    assert app["build"] == [["npm", "ci"], ["npm", "run", "build"]]
    assert app["start"] == ["node", "server.js"]
    assert app["servers"][0]["name"] == "web-1"
    async with scoped(tenant.org.id):
        row = await App.get(name="shop")
    assert "s3cr3t-value" not in row.env_encrypted and row.env_encrypted.startswith("v1:")
    listing = await (await client.get("/api/v1/apps", headers=tenant.auth(Role.VIEWER))).get_data(
        as_text=True
    )
    assert "s3cr3t-value" not in listing
    changed = await client.put(
        "/api/v1/apps/shop/env",
        headers=tenant.auth(Role.MEMBER),
        json={"set": {"DEBUG": "0"}, "unset": ["SECRET_KEY"]},
    )
    assert (await changed.get_json())["env"] == {"DEBUG": "********"}


BAD_APPS = [
    ({"build": ["npm ci && npm run build"]}, "shell syntax"),
    ({"start": "node server.js > log"}, "shell syntax"),
    ({"repo": "--upload-pack=touch /tmp/x"}, "repository"),
    ({"repo": "ext::sh -c id"}, "repository"),
    ({"domains": ["bad domain!"]}, "invalid domain"),
    ({"env": {"1BAD": "x"}}, "invalid environment variable name"),
    ({"port": 70000}, "port"),
    ({"runtime": "nonexistent"}, "unknown runtime"),
    ({"servers": ["no-such-server"]}, "not found"),
]


@pytest.mark.parametrize(("extra", "problem"), BAD_APPS)
async def test_bad_apps_are_refused(
    control_plane: ControlPlaneUnderTest, extra: dict[str, object], problem: str
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    made = await control_plane.client().post(
        "/api/v1/apps", headers=tenant.auth(), json=_app(**extra)
    )
    assert made.status_code in (400, 404), await made.get_data(as_text=True)
    assert problem in (await made.get_data(as_text=True))
    async with scoped(tenant.org.id):
        assert await App.all().count() == 0


async def test_domains_are_not_shared_between_apps(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    assert (
        await client.post("/api/v1/apps", headers=tenant.auth(), json=_app())
    ).status_code == 201
    again = await client.post("/api/v1/apps", headers=tenant.auth(), json=_app(name="shop2"))
    assert (await again.get_json())["error"]["code"] == "APP004"


async def _webhook(cp: ControlPlaneUnderTest, tenant: Tenant) -> dict[str, str]:
    info = await cp.client().get("/api/v1/apps/shop/webhook", headers=tenant.auth(Role.ADMIN))
    assert info.status_code == 200
    return dict(await info.get_json())


def _signed(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@BOTH_DATABASES
async def test_webhooks_verify_before_deploying(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    await client.post("/api/v1/apps", headers=tenant.auth(), json=_app())
    hook = await _webhook(control_plane, tenant)
    github = "/api/v1/hooks/" + hook["github_url"].split("/api/v1/hooks/", 1)[1]
    gitlab = "/api/v1/hooks/" + hook["gitlab_url"].split("/api/v1/hooks/", 1)[1]
    sha = "a" * 40
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()

    async def deployments() -> int:
        async with scoped(tenant.org.id):
            return await Deployment.all().count()

    for headers in (
        {},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": _signed("wrong secret", body)},
    ):
        refused = await client.post(
            github,
            data=body,
            headers={"X-GitHub-Event": "push", "Content-Type": "application/json", **headers},
        )
        assert refused.status_code == 401
        assert (await refused.get_json())["error"]["code"] == "HOOK001"
    bad_gitlab = await client.post(gitlab, data=body, headers={"X-Gitlab-Token": "nope"})
    assert bad_gitlab.status_code == 401
    assert await deployments() == 0

    other = json.dumps({"ref": "refs/heads/feature", "after": sha}).encode()
    ignored = await client.post(
        github,
        data=other,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": _signed(hook["secret"], other)},
    )
    assert (await ignored.get_json())["status"] == "ignored"
    ping = await client.post(
        github,
        data=b"{}",
        headers={"X-GitHub-Event": "ping", "X-Hub-Signature-256": _signed(hook["secret"], b"{}")},
    )
    assert (await ping.get_json())["status"] == "ignored"
    assert await deployments() == 0

    accepted = await client.post(
        github,
        data=body,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": _signed(hook["secret"], body)},
    )
    assert accepted.status_code == 202
    by_gitlab = await client.post(
        gitlab, data=body, headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": hook["secret"]}
    )
    assert by_gitlab.status_code == 202
    async with scoped(tenant.org.id):
        rows = await Deployment.all()
    assert {r.triggered_by for r in rows} == {"webhook:github", "webhook:gitlab"}
    assert {r.commit_sha for r in rows} == {sha}
    # No agent is connected: the deployments end failed, with the reason.
    for _ in range(100):
        async with scoped(tenant.org.id):
            done = await Deployment.filter(status=DeploymentStatus.FAILED).count()
        if done == 2:
            break
        await asyncio.sleep(0.05)
    async with scoped(tenant.org.id):
        failed = await Deployment.all()
    assert all(d.status == DeploymentStatus.FAILED for d in failed)
    assert all("not connected" in (d.reason or "") for d in failed), [d.reason for d in failed]
    logs = await (
        await client.get(f"/api/v1/deployments/{failed[0].id}/logs", headers=tenant.auth())
    ).get_json()
    assert any("not connected" in line["line"] for line in logs["lines"])


async def test_webhook_of_another_org_is_not_found(control_plane: ControlPlaneUnderTest) -> None:
    a = await control_plane.tenant("Acme")
    b = await control_plane.tenant("Bravo")
    await _server(control_plane, a)
    await control_plane.client().post("/api/v1/apps", headers=a.auth(), json=_app())
    hook = await _webhook(control_plane, a)
    path = "/api/v1/hooks/" + hook["github_url"].split("/api/v1/hooks/", 1)[1]
    forged = path.replace(str(a.org.id), str(b.org.id))
    body = b"{}"
    response = await control_plane.client().post(
        forged, data=body, headers={"X-Hub-Signature-256": _signed(hook["secret"], body)}
    )
    assert response.status_code == 404
