"""Organisations never see or touch each other's data: through the API, and on PostgreSQL
even through raw SQL that forgets the scope (row-level security)."""

from __future__ import annotations

import pytest

from serverflow.models import TENANT_MODELS, ApiToken, Membership, Role, Server
from serverflow.tenancy import ScopeMissing, scoped
from serverflow_testkit.postgres import afetch
from tests.conftest import BOTH_DATABASES, ControlPlaneUnderTest, Tenant, sign_in


async def _objects_of(cp: ControlPlaneUnderTest, tenant: Tenant) -> dict[str, str]:
    """One object of every kind the API exposes, created in `tenant`."""
    client = cp.client()
    server = await client.post("/api/v1/servers", json={"name": "db-1"}, headers=tenant.auth())
    assert server.status_code == 201
    token = await client.post("/api/v1/tokens", json={"name": "ci"}, headers=tenant.auth())
    assert token.status_code == 201
    member = await cp.user(tenant, Role.MEMBER)
    async with scoped(tenant.org.id):
        membership = await Membership.get(user_id=member.id)
    return {
        "servers": (await server.get_json())["id"],
        "tokens": (await token.get_json())["id"],
        "members": str(membership.id),
    }


async def _counts(tenant: Tenant) -> dict[str, int]:
    async with scoped(tenant.org.id):
        return {
            "servers": await Server.all().count(),
            "tokens": await ApiToken.filter(revoked_at__isnull=True).count(),
            "members": await Membership.all().count(),
        }


PATCHES = {"servers": {"name": "stolen"}, "members": {"role": "viewer"}}


@BOTH_DATABASES
async def test_other_org_objects_are_not_found(control_plane: ControlPlaneUnderTest) -> None:
    a = await control_plane.tenant("Acme")
    b = await control_plane.tenant("Bravo")
    b_objects = await _objects_of(control_plane, b)
    before = await _counts(b)
    client = control_plane.client()

    a_user = await control_plane.user(a, Role.ADMIN)
    session_client = control_plane.client()
    csrf = await sign_in(session_client, a_user.email)

    callers = [(client, a.auth(Role.OWNER)), (session_client, {"X-CSRF-Token": csrf})]
    for http, headers in callers:
        for kind, object_id in b_objects.items():
            url = f"/api/v1/{kind}/{object_id}"
            read = await http.get(url, headers=headers)
            assert read.status_code == 404, (kind, await read.get_data(as_text=True))
            assert (await read.get_json())["error"]["code"] in {"SRV001", "TOK001", "MEM001"}
            if kind in PATCHES:
                update = await http.patch(url, json=PATCHES[kind], headers=headers)
                assert update.status_code == 404, kind
            delete = await http.delete(url, headers=headers)
            assert delete.status_code == 404, kind
            listing = await (await http.get(f"/api/v1/{kind}", headers=headers)).get_json()
            assert object_id not in {o["id"] for o in listing[kind]}

    assert await _counts(b) == before
    async with scoped(b.org.id):
        server = await Server.get(id=b_objects["servers"])
        assert server.name == "db-1"


@BOTH_DATABASES
async def test_token_of_other_org_cannot_be_used_with_forged_prefix(
    control_plane: ControlPlaneUnderTest,
) -> None:
    a = await control_plane.tenant("Acme")
    b = await control_plane.tenant("Bravo")
    # A's secret presented under B's organisation id: the hash lookup in B finds nothing.
    secret = a.tokens[Role.OWNER].split("_", 2)[2]
    forged = f"sf_{b.org.id.hex}_{secret}"
    response = await control_plane.client().get(
        "/api/v1/servers", headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "AUTH002"


@BOTH_DATABASES
async def test_queries_without_scope_are_refused(control_plane: ControlPlaneUnderTest) -> None:
    await control_plane.tenant("Acme")
    for model in TENANT_MODELS:
        with pytest.raises(ScopeMissing):
            await model.all()
    with pytest.raises(ScopeMissing):
        await Server.create(name="x")


@BOTH_DATABASES
async def test_create_in_one_scope_cannot_target_another_org(
    control_plane: ControlPlaneUnderTest,
) -> None:
    a = await control_plane.tenant("Acme")
    b = await control_plane.tenant("Bravo")
    async with scoped(a.org.id):
        with pytest.raises(ScopeMissing):
            await Server.create(name="x", organization_id=b.org.id)
    async with scoped(b.org.id):
        assert await Server.all().count() == 0


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_row_level_security_hides_other_orgs_from_raw_sql(
    control_plane: ControlPlaneUnderTest,
) -> None:
    a = await control_plane.tenant("Acme")
    b = await control_plane.tenant("Bravo")
    await _objects_of(control_plane, a)
    await _objects_of(control_plane, b)
    url = control_plane.db_url

    role = await afetch(
        url, "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert role[0]["rolsuper"] is False and role[0]["rolbypassrls"] is False

    tables = [m._meta.db_table for m in TENANT_MODELS]
    for table in tables:
        flags = await afetch(
            url,
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = $1",
            table,
        )
        assert flags[0]["relrowsecurity"] and flags[0]["relforcerowsecurity"], table
        # The app role owns the tables, yet sees nothing without a setting...
        assert await afetch(url, f'SELECT * FROM "{table}"') == [], table
    for table in ("servers", "api_tokens", "memberships"):
        # ...and with A's setting, only A's rows: raw SQL with no WHERE clause at all.
        rows = await afetch(
            url,
            f"""
            WITH s AS (SELECT set_config('app.org_id', '{a.org.id}', false))
            SELECT t.organization_id FROM s, "{table}" t""",
        )
        assert rows, table
        assert {r["organization_id"] for r in rows} == {a.org.id}, table

    # Writing a row into another organisation is refused by the policy's WITH CHECK.
    with pytest.raises(Exception, match="row-level security"):
        await afetch(
            url,
            f"""
            WITH s AS (SELECT set_config('app.org_id', '{a.org.id}', false))
            INSERT INTO servers (id, name, description, status, created_at, organization_id)
            SELECT gen_random_uuid(), 'evil', '', 'pending', now(), '{b.org.id}' FROM s
            RETURNING id""",
        )


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_every_table_with_an_organisation_has_a_policy(
    control_plane: ControlPlaneUnderTest,
) -> None:
    """Guards future migrations: a new tenant table without RLS fails here."""
    url = control_plane.db_url
    tables = {
        r["table_name"]
        for r in await afetch(
            url,
            """
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.table_constraints tc ON tc.table_name = c.table_name
        JOIN information_schema.constraint_column_usage u
          ON u.constraint_name = tc.constraint_name
        WHERE c.column_name = 'organization_id' AND tc.constraint_type = 'FOREIGN KEY'
          AND u.table_name = 'organizations'""",
        )
    }
    assert tables >= {"servers", "api_tokens", "memberships"}
    with_policy = {r["tablename"] for r in await afetch(url, "SELECT tablename FROM pg_policies")}
    assert tables <= with_policy
