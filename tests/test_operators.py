"""Instance operators: plugins are the instance's, so only an operator changes them; an
organisation's admin (or owner) gets 403 and cannot touch another organisation's apps that
way; what operators do lands in the instance's audit chain, which `serverflow audit
verify` checks with the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from serverflow import audit
from serverflow.accounts import issue_token
from serverflow.models import InstanceAuditEntry, Role, User
from serverflow_testkit.controlplane import cli_env, run_cli
from tests.conftest import ControlPlaneUnderTest, Tenant, sign_in

INSTANCE_WIDE = [
    ("POST", "/api/v1/plugins/install", {"name": "hello-runtime"}),
    ("POST", "/api/v1/plugins/runtime_pm2/disable", None),
    ("POST", "/api/v1/plugins/runtime_pm2/enable", None),
    ("GET", "/api/v1/instance/audit", None),
    ("GET", "/api/v1/instance/audit/verify", None),
]


async def create_app(cp: ControlPlaneUnderTest, tenant: Tenant, name: str) -> int:
    client = cp.client()
    await client.post("/api/v1/servers", json={"name": "web-1"}, headers=tenant.auth())
    made = await client.post(
        "/api/v1/apps",
        json={"name": name, "repo": "https://git.example.test/x.git", "servers": ["web-1"]},
        headers=tenant.auth(),
    )
    return made.status_code


async def test_organisation_admins_cannot_change_the_instance(
    control_plane: ControlPlaneUnderTest,
) -> None:
    a, b = await control_plane.tenant("Alpha"), await control_plane.tenant("Beta")
    client = control_plane.client()
    assert await create_app(control_plane, a, "before") == 201

    for role in (Role.ADMIN, Role.OWNER):
        for method, path, body in INSTANCE_WIDE:
            denied = await client.open(path, method=method, json=body, headers=b.auth(role))
            assert denied.status_code == 403, (role, method, path)
            assert (await denied.get_json())["error"]["code"] == "AUTH007"
    # B's attempts changed nothing for A: pm2 is still there, A's apps are created.
    listed = await (await client.get("/api/v1/plugins", headers=a.auth())).get_json()
    pm2 = next(p for p in listed["plugins"] if p["name"] == "runtime_pm2")
    assert pm2["status"] == "enabled"
    assert await create_app(control_plane, a, "after") == 201

    # The refused changes are in the instance's chain, naming B, its token and the code.
    refused = [e for e in await audit.page(chain=audit.INSTANCE, limit=100) if e.outcome != "ok"]
    assert {(e.action, e.actor, e.outcome) for e in refused} >= {
        ("api.disable_plugin", "token:admin-token", "AUTH007"),
        ("api.install_plugin", "token:owner-token", "AUTH007"),
    }
    assert all(e.details["organization_id"] == str(b.org.id) for e in refused)
    assert all(e.details["source"] for e in refused)

    # The browser shows B's admin no plugin buttons, and no instance chain.
    admin = await control_plane.user(b, Role.ADMIN)
    await sign_in(client, admin.email)
    page = await (await client.get("/plugins")).get_data(as_text=True)
    assert 'id="plugins-operator-only"' in page and "data-plugin-action" not in page
    assert (await client.get("/audit?chain=instance")).status_code == 403


async def test_an_operator_changes_plugins_and_it_lands_in_the_instance_chain(
    control_plane: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    a, b = await control_plane.tenant("Alpha"), await control_plane.tenant("Beta")
    operator = await control_plane.operator(b)
    client = control_plane.client()
    me = await (await client.get("/api/v1/me", headers=operator)).get_json()
    assert me["operator"] is True
    off = await client.post("/api/v1/plugins/runtime_pm2/disable", headers=operator)
    assert off.status_code == 200, await off.get_data(as_text=True)
    assert await create_app(control_plane, a, "while-off") == 400  # the instance's choice
    on = await client.post("/api/v1/plugins/runtime_pm2/enable", headers=operator)
    assert on.status_code == 200
    assert await create_app(control_plane, a, "back-on") == 201

    chain = await (await client.get("/api/v1/instance/audit", headers=operator)).get_json()
    done = [(e["action"], e["actor"], e["outcome"]) for e in chain["entries"]]
    assert ("api.disable_plugin", "token:operator-token", "ok") in done
    assert ("api.enable_plugin", "token:operator-token", "ok") in done
    # ... and not in the organisation's own log.
    own = await (await client.get("/api/v1/audit", headers=b.auth())).get_json()
    assert not [e for e in own["entries"] if e["action"].endswith("_plugin")]
    verdict = await (await client.get("/api/v1/instance/audit/verify", headers=operator)).get_json()
    assert verdict["ok"] is True and verdict["entries"] >= 2

    # An operator's browser shows the instance chain.
    await sign_in(client, b.owner.email)
    page = await (await client.get("/audit?chain=instance")).get_data(as_text=True)
    assert 'data-chain="instance"' in page and "api.disable_plugin" in page
    plugins = await (await client.get("/plugins")).get_data(as_text=True)
    assert "data-plugin-action" in plugins

    # `serverflow audit verify` checks the instance's chain with the organisations'.
    env = cli_env(tmp_path / "data", SERVERFLOW_DATABASE_URL=control_plane.db_url)
    verified = run_cli("audit", "verify", env=env).stdout
    assert "ok      instance:" in verified and f"ok      {a.org.id}" in verified


async def test_operator_tokens_follow_their_creator(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Alpha")
    client = control_plane.client()
    # An organisation's admin cannot mint a token that acts as an operator.
    asked = await client.post(
        "/api/v1/tokens",
        json={"name": "sneaky", "role": "admin", "operator": True},
        headers=tenant.auth(Role.OWNER),
    )
    assert asked.status_code == 403 and (await asked.get_json())["error"]["code"] == "TOK003"

    operator = await control_plane.operator(tenant)
    made = await client.post(
        "/api/v1/tokens", json={"name": "ops", "role": "admin", "operator": True}, headers=operator
    )
    assert made.status_code == 201 and (await made.get_json())["operator"] is True
    ops = {"Authorization": f"Bearer {(await made.get_json())['token']}"}
    assert (await client.get("/api/v1/instance/audit", headers=ops)).status_code == 200
    # Its creator is no operator any more: neither is the token.
    await User.filter(id=tenant.owner.id).update(is_operator=False)
    assert (await client.get("/api/v1/instance/audit", headers=ops)).status_code == 403
    assert (await client.get("/api/v1/instance/audit", headers=operator)).status_code == 403


async def test_the_operators_cli(control_plane: ControlPlaneUnderTest, tmp_path: Path) -> None:
    tenant = await control_plane.tenant("Alpha")
    other = await control_plane.user(tenant, Role.MEMBER)
    env = cli_env(tmp_path / "data", SERVERFLOW_DATABASE_URL=control_plane.db_url)
    assert "no instance operators" in run_cli("operators", "list", env=env).stdout
    added = run_cli("operators", "add", tenant.owner.email.upper(), env=env)
    assert f"{tenant.owner.email} is an instance operator" in added.stdout
    run_cli("operators", "add", other.email, env=env)
    assert run_cli("operators", "list", "--json", env=env).stdout.count("@") == 2
    run_cli("operators", "remove", other.email, env=env)
    last = run_cli("operators", "remove", tenant.owner.email, env=env, check=False)
    assert last.returncode == 1 and "OPR001" in last.stderr and "last" in last.stderr
    missing = run_cli("operators", "add", "nobody@alpha.test", env=env, check=False)
    assert missing.returncode == 1 and "USR002" in missing.stderr
    rows = await InstanceAuditEntry.all().order_by("seq")
    assert [(r.action, r.target) for r in rows] == [
        ("operator.added", f"user:{tenant.owner.email}"),
        ("operator.added", f"user:{other.email}"),
        ("operator.removed", f"user:{other.email}"),
    ]
    assert all(r.actor.startswith("cli") for r in rows)
    assert (await audit.verify(audit.INSTANCE)).ok

    token = run_cli(
        "tokens", "create", "--org", tenant.org.slug, "--name", "ci", "--operator", env=env
    ).stdout.splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    client = control_plane.client()
    assert (await client.get("/api/v1/instance/audit", headers=headers)).status_code == 200


@pytest.mark.parametrize("order", ["first user", "later user"])
async def test_the_first_admin_of_serverflow_up_is_an_operator(tmp_path: Path, order: str) -> None:
    env = cli_env(tmp_path / "data")
    if order == "later user":  # users created before `up`: `up` makes no admin
        run_cli("users", "create", "ana@example.test", "--new-org", "Acme", env=env)
    from serverflow_testkit.controlplane import ControlPlaneProcess

    with ControlPlaneProcess(tmp_path / "data") as cp:
        listed = run_cli("operators", "list", env=env).stdout
        assert ("admin@serverflow.local" in listed) == (order == "first user"), cp.log()


async def test_an_operator_token_created_by_nobody_is_one(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Alpha")
    issued = await issue_token(tenant.org.id, "host", Role.VIEWER, operator=True)
    headers = {"Authorization": f"Bearer {issued.value}"}
    answer = await control_plane.client().get("/api/v1/instance/audit", headers=headers)
    assert answer.status_code == 200
