"""Apps through the API: validation, secrets kept masked, webhooks verified."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest

from serverflow.models import App, AppServer, Deployment, DeploymentStatus, Role
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
    # The app follows the default branch, which pushes name (GitHub: repository, GitLab: project).
    default = {"default_branch": "main"}
    push = {"ref": "refs/heads/main", "after": sha, "repository": default, "project": default}
    body = json.dumps(push).encode()

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

    other = json.dumps({**push, "ref": "refs/heads/feature"}).encode()
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


async def _audit(cp: ControlPlaneUnderTest, tenant: Tenant, action: str) -> list[dict[str, object]]:
    listed = await cp.client().get(f"/api/v1/audit?action={action}", headers=tenant.auth())
    entries: list[dict[str, object]] = (await listed.get_json())["entries"]
    return entries


async def test_settings_change_and_null_brings_back_each_default(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    made = await client.post("/api/v1/apps", headers=tenant.auth(), json=_app())
    app = await made.get_json()
    # No branch given: the app follows the repository's default branch.
    assert app["branch"] is None and app["default_branch"] is None
    assert app["formation"] == {} and app["build"] is None and app["start"] is None

    changes = {
        "branch": "release/2",
        "build": ["npm ci", "npm run build"],
        "start": "node server.js",
        "port": 8080,
        "health_path": "/healthz",
        "health_timeout_s": 30,
        "domains": ["shop.example.test", "www.shop.example.test"],
        "tls": False,
        "keep_releases": 3,
    }
    patched = await client.patch(
        "/api/v1/apps/shop", headers=tenant.auth(Role.MEMBER), json=changes
    )
    assert patched.status_code == 200, await patched.get_data(as_text=True)
    after = await patched.get_json()
    assert after["branch"] == "release/2" and after["port"] == 8080
    assert after["build"] == [["npm", "ci"], ["npm", "run", "build"]]
    assert after["start"] == ["node", "server.js"]
    assert after["health_path"] == "/healthz" and after["health_timeout_s"] == 30
    assert after["domains"] == ["shop.example.test", "www.shop.example.test"]
    assert after["tls"] is False and after["keep_releases"] == 3

    # null: the default branch, detection, a fresh port per release; the rest is kept.
    cleared = await client.patch(
        "/api/v1/apps/shop",
        headers=tenant.auth(Role.MEMBER),
        json={"branch": None, "build": None, "start": None, "port": None},
    )
    back = await cleared.get_json()
    assert [back[k] for k in ("branch", "build", "start", "port")] == [None] * 4
    assert back["health_timeout_s"] == 30 and back["tls"] is False
    async with scoped(tenant.org.id):
        row = await App.get(name="shop")
    assert row.branch is None and row.build_commands is None and row.start_command is None

    updates = await _audit(control_plane, tenant, "api.update_app")
    assert [e["outcome"] for e in updates] == ["ok", "ok"]
    assert {"branch": "release/2"}.items() <= updates[-1]["details"]["body"].items()  # type: ignore[index]


BAD_PATCHES = [
    ({"branch": ""}, "branch"),
    ({"branch": "a..b"}, "invalid branch"),
    ({"start": ""}, "start command is empty"),
    ({"start": "node a.js | tee log"}, "shell syntax"),
    ({"build": ["make && make install"]}, "shell syntax"),
    ({"health_timeout_s": 0}, "health_timeout_s"),
    ({"keep_releases": 1}, "keep_releases"),
    ({"port": 0}, "port"),
    ({"runtime": "nonexistent"}, "unknown runtime"),
    ({"formation": {"worker": 2}}, "formation"),  # scaled with PUT .../formation
]


@pytest.mark.parametrize(("patch", "problem"), BAD_PATCHES)
async def test_bad_settings_are_refused_and_nothing_changes(
    control_plane: ControlPlaneUnderTest, patch: dict[str, object], problem: str
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    await client.post("/api/v1/apps", headers=tenant.auth(), json=_app(branch="main"))
    refused = await client.patch("/api/v1/apps/shop", headers=tenant.auth(), json=patch)
    assert refused.status_code == 400, await refused.get_data(as_text=True)
    assert problem in await refused.get_data(as_text=True)
    app = await (await client.get("/api/v1/apps/shop", headers=tenant.auth())).get_json()
    assert app["branch"] == "main" and app["start"] is None and app["health_timeout_s"] == 60


BAD_SCALES = [
    ({"web": 2}, "APP007", "web cannot be scaled"),
    ({"release": 1, "worker": 1}, "APP007", "release cannot be scaled"),
    ({"worker": 21}, "VAL001", "less than or equal to 20"),
    ({"worker": -1}, "VAL001", "greater than or equal to 0"),
    ({"worker": "2"}, "VAL001", "valid integer"),
    ({"worker": True}, "VAL001", "valid integer"),
    ({"1worker": 1}, "VAL001", "invalid process type"),
    ({"wor-ker": 1}, "VAL001", "invalid process type"),
    ({"w" * 31: 1}, "VAL001", "invalid process type"),
    ({}, "VAL001", "at least 1"),
    ({f"type{i}": 1 for i in range(21)}, "VAL001", "at most 20"),
]


@pytest.mark.parametrize(("scale", "code", "problem"), BAD_SCALES)
async def test_bad_formations_are_refused(
    control_plane: ControlPlaneUnderTest, scale: dict[str, object], code: str, problem: str
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    await client.post("/api/v1/apps", headers=tenant.auth(), json=_app())
    await client.put("/api/v1/apps/shop/formation", headers=tenant.auth(), json={"scale": {"a": 1}})
    refused = await client.put(
        "/api/v1/apps/shop/formation", headers=tenant.auth(), json={"scale": scale}
    )
    assert refused.status_code == 400
    error = (await refused.get_json())["error"]
    assert error["code"] == code and problem in json.dumps(error), error
    app = await (await client.get("/api/v1/apps/shop", headers=tenant.auth())).get_json()
    assert app["formation"] == {"a": 1}


async def test_a_formation_is_merged_and_waits_for_a_deploy_when_nothing_is_live(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    await client.post("/api/v1/apps", headers=tenant.auth(), json=_app())
    member = tenant.auth(Role.MEMBER)
    first = await client.put(
        "/api/v1/apps/shop/formation", headers=member, json={"scale": {"worker": 2, "clock": 0}}
    )
    assert first.status_code == 200, await first.get_data(as_text=True)
    assert (await first.get_json())["formation"] == {"clock": 0, "worker": 2}
    again = await (
        await client.put(
            "/api/v1/apps/shop/formation", headers=member, json={"scale": {"worker": 3}}
        )
    ).get_json()
    assert again["formation"] == {"clock": 0, "worker": 3}
    assert again["deployments"] == []  # nothing live: it applies at the next deploy
    viewer = await client.put(
        "/api/v1/apps/shop/formation", headers=tenant.auth(Role.VIEWER), json={"scale": {"a": 1}}
    )
    assert viewer.status_code == 403
    env = await (
        await client.put("/api/v1/apps/shop/env", headers=member, json={"set": {"A": "1"}})
    ).get_json()
    assert env["deployments"] == [] and env["env"] == {"SECRET_KEY": "********", "A": "********"}


async def test_a_config_change_of_a_live_app_queues_its_live_commit_not_the_branch_head(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    server_id = await _server(control_plane, tenant)
    client = control_plane.client()
    await client.post("/api/v1/apps", headers=tenant.auth(), json=_app(branch="main"))
    live_sha = "b" * 40
    async with scoped(tenant.org.id):
        app = await App.get(name="shop")
        live = await Deployment.create(
            app_id=app.id,
            server_id=server_id,
            number=1,
            branch="main",
            commit_sha=live_sha,
            release="r1-bbbbbbb",
            spec={
                "name": "shop",
                "repo": app.repo_url,
                "commit": live_sha,
                "release": "r1-bbbbbbb",
            },
            triggered_by="test",
            status=DeploymentStatus.LIVE,
        )
        await AppServer.filter(app_id=app.id).update(live_deployment_id=live.id)
    changed = await client.put(
        "/api/v1/apps/shop/env", headers=tenant.auth(Role.MEMBER), json={"set": {"DEBUG": "1"}}
    )
    assert changed.status_code == 200, await changed.get_data(as_text=True)
    [queued] = (await changed.get_json())["deployments"]
    assert queued["kind"] == "config" and queued["number"] == 2
    assert queued["commit_sha"] == live_sha and queued["branch"] == "main"
    scaled = await client.put(
        "/api/v1/apps/shop/formation", headers=tenant.auth(), json={"scale": {"worker": 2}}
    )
    [again] = (await scaled.get_json())["deployments"]
    assert again["kind"] == "config" and again["commit_sha"] == live_sha
    async with scoped(tenant.org.id):
        row = await Deployment.get(id=again["id"])
    assert row.spec["formation"] == {"worker": 2} and "commit" not in row.spec


async def test_deploying_a_branch_makes_the_app_follow_it(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    client = control_plane.client()
    await client.post("/api/v1/apps", headers=tenant.auth(), json=_app())
    deployed = await client.post(
        "/api/v1/apps/shop/deploy", headers=tenant.auth(Role.MEMBER), json={"branch": "other"}
    )
    assert deployed.status_code == 202
    assert (await deployed.get_json())["deployments"][0]["branch"] == "other"
    app = await (await client.get("/api/v1/apps/shop", headers=tenant.auth())).get_json()
    assert app["branch"] == "other"
    [changed] = await _audit(control_plane, tenant, "app.branch_changed")
    assert changed["details"] == {"from": None, "to": "other", "by": "deploy"}
    assert changed["actor"] == "token:member-token" and changed["target"] == "app:shop"
    # A deploy without a branch keeps following it; the same branch again is no change.
    await client.post("/api/v1/apps/shop/deploy", headers=tenant.auth(), json={"branch": "other"})
    assert len(await _audit(control_plane, tenant, "app.branch_changed")) == 1
