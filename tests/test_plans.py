"""The plan lifecycle through the REST API: a person lists, shows, confirms or rejects what
an assistant proposed; a plan runs once, never after it expired, never for a weaker role.

Plans are proposed with `serverflow.plans.propose`, exactly what the MCP tools call
(tests/test_mcp.py drives the same through the MCP endpoint and a real agent).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from serverflow import db, plans
from serverflow.accounts import issue_token
from serverflow.app import create_app
from serverflow.auth import token_principal
from serverflow.controlplane import current
from serverflow.errors import InvalidInput, PermissionDenied
from serverflow.models import App, AuditEntry, Plan, PlanStatus, Role
from serverflow.plugins import Plugins
from serverflow.tenancy import scoped
from tests.conftest import BOTH_DATABASES, ControlPlaneUnderTest, Tenant, make_settings


async def _server(cp: ControlPlaneUnderTest, tenant: Tenant, name: str = "web-1") -> str:
    made = await cp.client().post("/api/v1/servers", json={"name": name}, headers=tenant.auth())
    assert made.status_code == 201
    return str((await made.get_json())["id"])


async def _app(cp: ControlPlaneUnderTest, tenant: Tenant, name: str = "shop") -> None:
    body = {"name": name, "repo": "https://git.example/shop.git", "servers": ["web-1"]}
    made = await cp.client().post("/api/v1/apps", json=body, headers=tenant.auth())
    assert made.status_code == 201, await made.get_data(as_text=True)


async def propose(
    cp: ControlPlaneUnderTest,
    token: str,
    tool: str,
    args: dict[str, Any],
) -> str:
    """What an MCP tool does for a change: a dry run stored as a plan."""
    principal = await token_principal(f"Bearer {token}")
    async with cp.app.app_context():
        plan = await plans.propose(current(), principal, tool, args)
    return str(plan.id)


def create_shop(secret: str = "s3cr3t") -> dict[str, Any]:
    return {
        "name": "shop",
        "repo": "https://git.example/shop.git",
        "servers": ["web-1"],
        "env": {"API_KEY": secret},
    }


async def _apps(tenant: Tenant) -> list[str]:
    async with scoped(tenant.org.id):
        return [a.name for a in await App.all()]


async def _audit(tenant: Tenant, action: str) -> list[tuple[str, str]]:
    async with scoped(tenant.org.id):
        rows = await AuditEntry.filter(action=action).order_by("seq")
    return [(r.actor, r.outcome) for r in rows]


@BOTH_DATABASES
async def test_a_person_confirms_a_change_plan_and_it_runs_once(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    plan_id = await propose(control_plane, tenant.tokens[Role.MEMBER], "create_app", create_shop())
    client = control_plane.client()

    listed = await (await client.get("/api/v1/plans", headers=tenant.auth(Role.VIEWER))).get_json()
    assert [p["id"] for p in listed["plans"]] == [plan_id]
    plan = listed["plans"][0]
    assert plan["status"] == "pending" and plan["kind"] == "change"
    assert plan["created_by"] == "token:member-token"
    assert plan["preview"]["app"]["env"] == {"API_KEY": "********"}
    assert "s3cr3t" not in json.dumps(listed)
    assert await _apps(tenant) == []  # the dry run created nothing

    for role in (Role.VIEWER, Role.MEMBER):  # confirming is for admins and owners
        denied = await client.post(f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth(role))
        assert denied.status_code == 403
        assert (await denied.get_json())["error"]["code"] == "AUTH004"
    assert await _apps(tenant) == []

    done = await client.post(f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth(Role.ADMIN))
    assert done.status_code == 200, await done.get_data(as_text=True)
    body = await done.get_json()
    assert body["status"] == "applied" and body["decided_by"] == "token:admin-token"
    assert body["result"]["app"]["name"] == "shop"
    assert await _apps(tenant) == ["shop"]
    shown = await client.get("/api/v1/apps/shop", headers=tenant.auth())
    assert (await shown.get_json())["env"] == {"API_KEY": "********"}

    again = await client.post(f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth(Role.OWNER))
    assert again.status_code == 409
    assert (await again.get_json())["error"]["code"] == "PLAN003"
    assert await _apps(tenant) == ["shop"]
    assert await _audit(tenant, "api.confirm_plan") == [
        ("token:viewer-token", "AUTH004"),
        ("token:member-token", "AUTH004"),
        ("token:admin-token", "ok"),
        ("token:owner-token", "PLAN003"),
    ]


async def test_concurrent_confirmations_run_the_plan_once(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    plan_id = await propose(control_plane, tenant.tokens[Role.MEMBER], "create_app", create_shop())
    client = control_plane.client()
    answers = await asyncio.gather(
        *(
            client.post(f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth(role))
            for role in (Role.ADMIN, Role.OWNER, Role.ADMIN, Role.OWNER)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 409, 409, 409]
    for answer in answers:
        if answer.status_code == 409:
            assert (await answer.get_json())["error"]["code"] == "PLAN003"
    assert await _apps(tenant) == ["shop"]


async def test_a_rejected_plan_never_runs(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    plan_id = await propose(control_plane, tenant.tokens[Role.MEMBER], "create_app", create_shop())
    client = control_plane.client()
    rejected = await client.post(f"/api/v1/plans/{plan_id}/reject", headers=tenant.auth())
    assert (await rejected.get_json())["status"] == "rejected"
    late = await client.post(f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth())
    assert late.status_code == 409 and (await late.get_json())["error"]["code"] == "PLAN003"
    assert await _apps(tenant) == []


@BOTH_DATABASES
async def test_a_plan_abandoned_mid_run_ends_failed_and_never_runs(
    control_plane: ControlPlaneUnderTest,
) -> None:
    """A control plane that stopped while running a plan leaves it "confirmed": the sweep
    ends it as failed (PLAN006), and it cannot be confirmed again."""
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    member = tenant.tokens[Role.MEMBER]
    stale = await propose(control_plane, member, "create_app", create_shop())
    running = await propose(control_plane, member, "create_app", create_shop())
    now = datetime.now(UTC)
    async with scoped(tenant.org.id):  # what a crash right after the claim leaves behind
        await Plan.filter(id=stale).update(
            status=PlanStatus.CONFIRMED, decided_by="user:x", decided_at=now - timedelta(hours=3)
        )
        await Plan.filter(id=running).update(
            status=PlanStatus.CONFIRMED, decided_by="user:x", decided_at=now - timedelta(minutes=5)
        )

    assert await plans.abandon_stale(tenant.org.id) == 1

    client = control_plane.client()
    shown = await (await client.get(f"/api/v1/plans/{stale}", headers=tenant.auth())).get_json()
    assert shown["status"] == "failed"
    assert shown["result"]["error"]["code"] == "PLAN006"
    still = await (await client.get(f"/api/v1/plans/{running}", headers=tenant.auth())).get_json()
    assert still["status"] == "confirmed"  # may still be running somewhere: left alone
    again = await client.post(f"/api/v1/plans/{stale}/confirm", headers=tenant.auth())
    assert again.status_code == 409 and (await again.get_json())["error"]["code"] == "PLAN003"
    assert await _apps(tenant) == []


async def test_a_destructive_plan_waits_for_a_person(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    await _app(control_plane, tenant)
    # A member may not even propose it: deleting needs the admin role.
    with pytest.raises(PermissionDenied) as denied:
        await propose(control_plane, tenant.tokens[Role.MEMBER], "delete_app", {"app": "shop"})
    assert denied.value.code == "AUTH004"

    applier = (await issue_token(tenant.org.id, "assistant", Role.OWNER, allow_apply=True)).value
    plan_id = await propose(control_plane, applier, "delete_app", {"app": "shop"})
    async with scoped(tenant.org.id):
        plan = await Plan.get(id=plan_id)
    assert plan.kind == "destructive" and "Delete app shop" in plan.summary
    # An assistant never applies it, even with allow_apply and the owner role.
    principal = await token_principal(f"Bearer {applier}")
    async with control_plane.app.app_context():
        with pytest.raises(PermissionDenied) as refused:
            await plans.apply(current(), principal, plan_id)
    assert refused.value.code == "PLAN005"
    assert await _apps(tenant) == ["shop"]

    done = await control_plane.client().post(
        f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth(Role.OWNER)
    )
    assert (await done.get_json())["status"] == "applied"
    assert await _apps(tenant) == []


async def test_a_plan_that_fails_says_why(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    server_id = await _server(control_plane, tenant)
    plan_id = await propose(control_plane, tenant.tokens[Role.MEMBER], "create_app", create_shop())
    client = control_plane.client()
    gone = await client.delete(f"/api/v1/servers/{server_id}", headers=tenant.auth())
    assert gone.status_code == 204
    done = await (
        await client.post(f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth())
    ).get_json()
    assert done["status"] == "failed"
    assert done["result"]["error"]["code"] == "SRV001"
    assert await _apps(tenant) == []


async def test_update_app_plan_shows_before_and_after(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _server(control_plane, tenant)
    await _server(control_plane, tenant, "web-2")
    await _app(control_plane, tenant)
    member = tenant.tokens[Role.MEMBER]
    args = {"app": "shop", "branch": "dev", "servers": ["web-1", "web-2"], "tls": None}
    plan_id = await propose(control_plane, member, "update_app", args)
    async with scoped(tenant.org.id):
        plan = await Plan.get(id=plan_id)
    assert plan.preview["changes"] == {
        "branch": {"from": None, "to": "dev"},  # it followed the default branch
        "servers": {"add": ["web-2"]},
    }
    with pytest.raises(InvalidInput, match="nothing to change"):
        await propose(control_plane, member, "update_app", {"app": "shop", "tls": True})
    done = await control_plane.client().post(
        f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth()
    )
    assert (await done.get_json())["status"] == "applied"
    app = await (
        await control_plane.client().get("/api/v1/apps/shop", headers=tenant.auth())
    ).get_json()
    assert app["branch"] == "dev" and sorted(s["name"] for s in app["servers"]) == [
        "web-1",
        "web-2",
    ]


async def test_unknown_malformed_and_foreign_plan_ids_are_not_found(
    control_plane: ControlPlaneUnderTest,
) -> None:
    acme = await control_plane.tenant("Acme")
    other = await control_plane.tenant("Other")
    await _server(control_plane, acme)
    theirs = await propose(control_plane, acme.tokens[Role.MEMBER], "create_app", create_shop())
    client = control_plane.client()
    for plan_id in ("nope", str(uuid.uuid4()), theirs, "1%20OR%201=1"):
        for method, suffix in (("GET", ""), ("POST", "/confirm"), ("POST", "/reject")):
            answer = await client.open(
                f"/api/v1/plans/{plan_id}{suffix}", method=method, headers=other.auth()
            )
            assert answer.status_code == 404, (plan_id, suffix)
            assert (await answer.get_json())["error"]["code"] == "PLAN001"
    listed = await (await client.get("/api/v1/plans", headers=other.auth())).get_json()
    assert listed == {"plans": []}
    bad = await client.get("/api/v1/plans?status=bogus", headers=acme.auth())
    assert bad.status_code == 400
    async with scoped(acme.org.id):
        assert (await Plan.get(id=theirs)).status == "pending"


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[ControlPlaneUnderTest]:
    """A control plane whose plans expire after one second."""
    db_url = f"sqlite://{tmp_path / 'serverflow.sqlite3'}"
    settings = make_settings(tmp_path, db_url, plan_expiry_seconds=1)
    await db.migrate(db_url)
    app = create_app(settings, plugins=Plugins())
    async with app.test_app() as test_app:
        yield ControlPlaneUnderTest(app=test_app.app, settings=settings, db_url=db_url)


async def test_an_expired_plan_cannot_be_confirmed(short_lived: ControlPlaneUnderTest) -> None:
    tenant = await short_lived.tenant("Acme")
    await _server(short_lived, tenant)
    plan_id = await propose(short_lived, tenant.tokens[Role.MEMBER], "create_app", create_shop())
    await asyncio.sleep(1.2)
    client = short_lived.client()
    late = await client.post(f"/api/v1/plans/{plan_id}/confirm", headers=tenant.auth())
    assert late.status_code == 409 and (await late.get_json())["error"]["code"] == "PLAN002"
    expired = await (
        await client.get("/api/v1/plans?status=expired", headers=tenant.auth())
    ).get_json()
    assert [p["id"] for p in expired["plans"]] == [plan_id]
    assert await _apps(tenant) == []
