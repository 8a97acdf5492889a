"""The audit log: every change recorded in order, secrets redacted, tampering detected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tortoise.transactions import in_transaction

from serverflow import audit
from serverflow.models import AuditEntry, InstanceAuditEntry, Role
from serverflow.tenancy import is_postgres, scoped
from serverflow.tokens import hash_token
from serverflow_testkit.controlplane import cli_env
from tests.conftest import BOTH_DATABASES, ControlPlaneUnderTest, Tenant, sign_in


async def _entries(tenant: Tenant) -> list[AuditEntry]:
    async with scoped(tenant.org.id):
        return list(await AuditEntry.all().order_by("seq"))


async def _changes(cp: ControlPlaneUnderTest, tenant: Tenant, name: str = "web-1") -> None:
    client = cp.client()
    made = await client.post("/api/v1/servers", json={"name": name}, headers=tenant.auth())
    assert made.status_code == 201
    refused = await client.post(
        "/api/v1/servers", json={"name": "web-2"}, headers=tenant.auth(Role.VIEWER)
    )
    assert refused.status_code == 403
    invalid = await client.post("/api/v1/servers", json={"name": "Web 2"}, headers=tenant.auth())
    assert invalid.status_code == 400
    token = await client.post("/api/v1/tokens", json={"name": "ci"}, headers=tenant.auth())
    assert token.status_code == 201
    await client.get("/api/v1/servers", headers=tenant.auth())  # reads are not audited


@BOTH_DATABASES
async def test_changes_are_audited_in_order(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    before = len(await _entries(tenant))
    await _changes(control_plane, tenant)
    rows = (await _entries(tenant))[before:]
    summary = [(r.actor, r.action, r.target, r.outcome) for r in rows]
    assert summary == [
        ("token:owner-token", "api.create_server", "POST /api/v1/servers", "ok"),
        ("token:viewer-token", "api.create_server", "POST /api/v1/servers", "AUTH004"),
        ("token:owner-token", "api.create_server", "POST /api/v1/servers", "VAL001"),
        ("token:owner-token", "api.create_token", "POST /api/v1/tokens", "ok"),
    ]
    assert rows[0].details["body"] == {"name": "web-1"}
    assert [r.seq for r in rows] == list(range(rows[0].seq, rows[0].seq + 4))
    verdict = await audit.verify(tenant.org.id)
    assert verdict.ok, verdict


def test_secrets_are_redacted() -> None:
    token = "sf_" + "a" * 32 + "_" + "b" * 43
    cleaned = audit.redact(
        {
            "password": "hunter22",
            "env": {"DB_URL": "postgres://x:y@z"},
            "set": {"API_KEY": "abc"},
            "note": token,
            "name": "web-1",
            "nested": [{"client_secret": "s"}],
            "token_id": "5f0c",
            "token_name": "ci",
            "token_value": token,
        }
    )
    text = json.dumps(cleaned)
    for secret in ("hunter22", "postgres://x:y@z", "abc", token):
        assert secret not in text
    assert cleaned["name"] == "web-1" and cleaned["env"] == {"DB_URL": "********"}
    # Naming a token is not revealing it.
    assert (cleaned["token_id"], cleaned["token_name"]) == ("5f0c", "ci")
    assert cleaned["token_value"] == "********"


@BOTH_DATABASES
async def test_a_revocation_names_the_revoked_token(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    made = await client.post("/api/v1/tokens", json={"name": "deploy-bot"}, headers=tenant.auth())
    assert made.status_code == 201
    issued = await made.get_json()
    secret, token_id = issued["token"], issued["id"]
    revoked = await client.delete(f"/api/v1/tokens/{token_id}", headers=tenant.auth())
    assert revoked.status_code == 200 and (await revoked.get_json())["revoked_at"]

    viewer = tenant.auth(Role.VIEWER)
    listed = await (await client.get("/api/v1/audit?limit=5", headers=viewer)).get_json()
    entries = listed["entries"]
    [event] = [e for e in entries if e["action"] == "token.revoked"]
    assert event["target"] == f"token:{token_id}"
    assert event["details"]["token_id"] == token_id
    assert event["details"]["token_name"] == "deploy-bot"
    [call] = [e for e in entries if e["action"] == "api.revoke_token"]
    assert call["details"]["path_args"] == {"token_id": token_id}
    text = json.dumps(entries)
    assert secret not in text and hash_token(secret) not in text

    verified = await (await client.get("/api/v1/audit/verify", headers=viewer)).get_json()
    assert verified["ok"] is True, verified
    assert (await audit.verify(tenant.org.id)).ok


async def _tamper(cp: ControlPlaneUnderTest, tenant: Tenant, sql_pg: str, sql_lite: str) -> None:
    """What someone with database access could do, triggers removed first."""
    async with scoped(tenant.org.id) as conn:
        if is_postgres(conn):
            await conn.execute_query('DROP TRIGGER audit_log_append_only ON "audit_log"')
            await conn.execute_query(sql_pg)
        else:
            await conn.execute_query('DROP TRIGGER "audit_log_no_update"')
            await conn.execute_query('DROP TRIGGER "audit_log_no_delete"')
            await conn.execute_query(sql_lite)


@BOTH_DATABASES
async def test_the_database_refuses_edits(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    await _changes(control_plane, tenant)
    for sql in ("UPDATE audit_log SET outcome = 'ok'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"):
            async with scoped(tenant.org.id) as conn:
                await conn.execute_query(sql)
    assert (await audit.verify(tenant.org.id)).ok


@BOTH_DATABASES
@pytest.mark.parametrize("how", ["edit", "delete"])
async def test_tampering_is_detected_and_named(
    control_plane: ControlPlaneUnderTest, how: str
) -> None:
    tenant = await control_plane.tenant("Acme")
    await _changes(control_plane, tenant)
    victim = (await _entries(tenant))[1]
    if how == "edit":
        change = f"UPDATE audit_log SET outcome = 'ok' WHERE id = {victim.id}"
    else:
        change = f"DELETE FROM audit_log WHERE id = {victim.id}"
    await _tamper(control_plane, tenant, change, change)
    verdict = await audit.verify(tenant.org.id)
    assert not verdict.ok
    assert verdict.broken_seq == victim.seq
    assert ("edited" if how == "edit" else "missing") in (verdict.problem or "")


@BOTH_DATABASES
async def test_retention_keeps_the_chain_checkable(control_plane: ControlPlaneUnderTest) -> None:
    tenant = await control_plane.tenant("Acme")
    await _changes(control_plane, tenant)
    count = len(await _entries(tenant))
    removed = await audit.prune(tenant.org.id, older_than_days=-1)  # everything so far
    assert removed == count
    rows = await _entries(tenant)
    assert [r.action for r in rows] == [audit.PRUNE_ACTION]
    assert (await audit.verify(tenant.org.id)).ok
    await _changes(control_plane, tenant, "web-9")
    assert (await audit.verify(tenant.org.id)).ok
    # Removing the marker (to hide the removal of older entries) is detected.
    marker = rows[0]
    change = f"DELETE FROM audit_log WHERE id = {marker.id}"
    await _tamper(control_plane, tenant, change, change)
    assert not (await audit.verify(tenant.org.id)).ok


async def test_the_api_and_the_dashboard_read_the_log(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    other = await control_plane.tenant("Globex")
    await _changes(control_plane, tenant)
    await _changes(control_plane, other, "globex-web")
    client = control_plane.client()
    viewer = tenant.auth(Role.VIEWER)

    listed = await client.get("/api/v1/audit?limit=2", headers=viewer)
    assert listed.status_code == 200
    first = await listed.get_json()
    newest = await _entries(tenant)
    assert [e["seq"] for e in first["entries"]] == [newest[-1].seq, newest[-2].seq]
    assert first["entries"][0]["action"] == "api.create_token"
    assert first["next_before"] == newest[-2].seq
    older = await client.get(f"/api/v1/audit?before={first['next_before']}", headers=viewer)
    rest = (await older.get_json())["entries"]
    assert [e["seq"] for e in rest] == [r.seq for r in reversed(newest[:-2])]
    assert all("globex" not in json.dumps(e) for e in first["entries"] + rest)

    refusals = await client.get("/api/v1/audit?actor=viewer-token", headers=viewer)
    [refusal] = (await refusals.get_json())["entries"]
    assert (refusal["action"], refusal["outcome"]) == ("api.create_server", "AUTH004")
    bad = await client.get("/api/v1/audit?limit=0", headers=viewer)
    assert bad.status_code == 400 and (await bad.get_json())["error"]["code"] == "VAL001"

    verified = await client.get("/api/v1/audit/verify", headers=viewer)
    assert await verified.get_json() == {
        "ok": True,
        "entries": len(newest),
        "broken_seq": None,
        "problem": None,
    }

    await sign_in(client, tenant.owner.email)
    page = await (await client.get("/audit?action=api.create_server&verify=1")).get_data(
        as_text=True
    )
    assert page.count('<tr data-seq="') == 3  # the three create_server calls, refusals too
    assert "AUTH004" in page and "VAL001" in page and "api.create_token" not in page
    assert 'id="audit-verdict" data-ok="true"' in page

    victim = newest[0]
    change = f"UPDATE audit_log SET actor = 'someone-else' WHERE id = {victim.id}"
    await _tamper(control_plane, tenant, change, change)
    broken = await (await client.get("/audit?verify=1")).get_data(as_text=True)
    assert 'data-ok="false"' in broken and f"#{victim.seq}" in broken
    assert (await (await client.get("/api/v1/audit/verify", headers=viewer)).get_json())[
        "broken_seq"
    ] == victim.seq


def test_cli_verify_and_export(tmp_path: Path) -> None:
    from serverflow_testkit.controlplane import run_cli

    data = tmp_path / "data"
    env = cli_env(data)
    run_cli("users", "create", "o@acme.test", "--new-org", "Acme", "--role", "owner", env=env)
    token = json.loads(
        run_cli("tokens", "create", "--org", "acme", "--name", "t", "--json", env=env).stdout
    )["token"]
    from serverflow_testkit.controlplane import ControlPlaneProcess

    with ControlPlaneProcess(data) as cp:
        import httpx

        for name in ("a1", "a2", "a3"):
            httpx.post(
                cp.url + "/api/v1/servers",
                json={"name": name},
                headers={"Authorization": f"Bearer {token}"},
            ).raise_for_status()
    ok = run_cli("audit", "verify", env=env)
    assert "ok" in ok.stdout and "3 entries" in ok.stdout
    exported = run_cli("audit", "export", "--org", "acme", "--since", "2000-01-01", env=env)
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    assert (
        run_cli("audit", "export", "--org", "acme", "--since", "2999-01-01", env=env).stdout == ""
    )
    db = data / "serverflow.sqlite3"
    script = (
        'DROP TRIGGER "audit_log_no_update";'
        "UPDATE audit_log SET target = 'POST /api/v1/nothing' WHERE seq = 2;"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
            " c.executescript(sys.argv[2]); c.commit()",
            str(db),
            script,
        ],
        check=True,
    )
    broken = run_cli("audit", "verify", env=env, check=False)
    assert broken.returncode == 1
    assert "entry #2" in broken.stderr and "edited" in broken.stderr


@BOTH_DATABASES
async def test_the_instance_chain_is_append_only_checkable_and_pruned(
    control_plane: ControlPlaneUnderTest,
) -> None:
    for n in range(3):
        await audit.append(audit.INSTANCE, audit.Record("cli:root", "operator.added", f"u{n}", {}))
    assert (await audit.verify(audit.INSTANCE)).ok
    for sql in ("UPDATE instance_audit_log SET outcome = 'x'", "DELETE FROM instance_audit_log"):
        with pytest.raises(Exception, match="append-only"):
            async with in_transaction() as conn:
                await conn.execute_query(sql)
    # Tampering (with the triggers lifted, as a database superuser could) is named.
    victim = await InstanceAuditEntry.get(seq=2)
    async with in_transaction() as conn:
        if is_postgres(conn):
            await conn.execute_query(
                "ALTER TABLE instance_audit_log DISABLE TRIGGER instance_audit_log_append_only"
            )
        else:
            await conn.execute_query('DROP TRIGGER "instance_audit_log_no_update"')
        await conn.execute_query(
            f"UPDATE instance_audit_log SET target = 'someone else' WHERE id = {victim.id}"
        )
        if is_postgres(conn):
            await conn.execute_query(
                "ALTER TABLE instance_audit_log ENABLE TRIGGER instance_audit_log_append_only"
            )
    verdict = await audit.verify(audit.INSTANCE)
    assert not verdict.ok and verdict.broken_seq == 2
    # Retention prunes it like an organisation's chain, leaving a marker.
    assert await audit.prune(audit.INSTANCE, older_than_days=-1) == 3
    assert [r.action for r in await InstanceAuditEntry.all()] == [audit.PRUNE_ACTION]
    assert (await audit.verify(audit.INSTANCE)).ok


async def test_numbers_canonical_json_cannot_hold_are_kept_as_text(
    control_plane: ControlPlaneUnderTest,
) -> None:
    # An MCP tool call may carry any JSON number; its entry must still be written.
    tenant = await control_plane.tenant("Acme")
    details = {"params": {"x": 10**30, "y": -(2**60), "z": float("inf"), "ok": 2**53 - 1}}
    await audit.append(tenant.org.id, audit.Record("token:t", "mcp.run_action", "x", details))
    async with scoped(tenant.org.id):
        entry = (await audit.page(action="mcp.run_action"))[0]
    assert entry.details["params"] == {
        "x": str(10**30),
        "y": str(-(2**60)),
        "z": "inf",
        "ok": 2**53 - 1,
    }
    assert (await audit.verify(tenant.org.id)).ok
