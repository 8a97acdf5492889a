"""Schema changes go through aerich; migrating an existing database keeps its data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from serverflow import db
from serverflow.accounts import add_member, create_organization, create_user
from serverflow.models import Membership, Role, Server, User
from serverflow.tenancy import scoped
from tests.conftest import BOTH_DATABASES

ROOT = Path(__file__).resolve().parents[1]
OLD_USER = "6f1c7f0e-6e56-4a8e-9a39-2e1b0b6f4a11"
OLD_SERVER = "0b0e9a3c-1d4e-4b55-8a49-7c0f3f3b9d21"


def test_models_match_committed_migrations() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "makemigrations.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_both_dialects_have_the_same_history() -> None:
    def names(dialect: str) -> list[str]:
        files = sorted(
            (db.MIGRATIONS_DIR / dialect / "models").glob("*_*.py"),
            key=lambda p: int(p.name.split("_", 1)[0]),
        )
        return [p.name.split("_", 1)[0] + "_" + p.stem.split("_", 2)[2] for p in files]

    assert names("sqlite") == names("postgres")
    assert len(names("sqlite")) >= 2


async def migrate_before(db_url: str, tmp_path: Path, number: int) -> None:
    """The database as the releases before migration `number` left it."""
    old = tmp_path / "old" / "models"
    old.mkdir(parents=True)
    for path in (db.migrations_location(db_url) / "models").glob("*_*.py"):
        if int(path.name.split("_", 1)[0]) < number:
            shutil.copy(path, old / path.name)
    await db.migrate(db_url, location=old.parent)


@BOTH_DATABASES
async def test_upgrading_an_old_database_keeps_its_data(db_url: str, tmp_path: Path) -> None:
    location = db.migrations_location(db_url)
    first = sorted((location / "models").glob("0_*.py"))
    assert len(first) == 1
    old = tmp_path / "old" / "models"
    old.mkdir(parents=True)
    shutil.copy(first[0], old / first[0].name)

    # A database created by the first release of the schema, with data in it.
    assert await db.migrate(db_url, location=old.parent) == [first[0].name]
    await db.init_orm(db_url)
    try:
        org = await create_organization("Acme")
        # The current models have columns this old schema lacks: insert through raw SQL.
        conn = db.connection()
        await conn.execute_query(
            "INSERT INTO users (id, email, name, password_hash, is_active, created_at) "
            f"VALUES ('{OLD_USER}', 'old@acme.test', 'Old', 'x', "
            "true, CURRENT_TIMESTAMP)"
        )
        async with scoped(org.id) as tenant_conn:  # RLS: tenant rows only within a scope
            await Membership.create(user_id=uuid.UUID(OLD_USER), role=Role.OWNER)
            await tenant_conn.execute_query(
                "INSERT INTO servers (id, name, description, status, created_at, "
                f"organization_id) VALUES ('{OLD_SERVER}', 'legacy-1', 'kept', 'pending', "
                f"CURRENT_TIMESTAMP, '{org.id}')"
            )
    finally:
        await db.close_orm()

    applied = await db.migrate(db_url)
    assert applied and all(not name.startswith("0_") for name in applied)
    assert await db.migrate(db_url) == []

    await db.init_orm(db_url)
    try:
        user = await User.get(email="old@acme.test")
        assert user.last_login_at is None  # the new column exists
        async with scoped(org.id):
            server = await Server.get(name="legacy-1")
            assert server.description == "kept"
            assert server.security_mode == "full"  # added by a later migration, defaulted
            assert await Membership.filter(user_id=user.id, role=Role.OWNER).exists()
    finally:
        await db.close_orm()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_superuser_database_role_is_refused(db_url: str, postgres: object) -> None:
    admin = postgres.admin_dsn  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"DB002|superuser"):
        await db.migrate(admin.replace("postgresql://", "postgres://"))
    assert db_url  # the app role itself is accepted (exercised by the other tests)


async def test_fresh_user_creation_after_full_migration(db_url: str) -> None:
    await db.migrate(db_url)
    await db.init_orm(db_url)
    try:
        org = await create_organization("Acme")
        user = await create_user("new@acme.test", "long enough password")
        await add_member(org, user, Role.VIEWER)
        assert (await User.get(email="new@acme.test")).last_login_at is None
    finally:
        await db.close_orm()


@BOTH_DATABASES
async def test_apps_keep_their_branch_and_rows_when_branches_become_optional(
    db_url: str, tmp_path: Path
) -> None:
    """Migration 8 makes apps.branch and deployments.branch nullable (on SQLite by swapping
    the columns): nothing that references an app is lost, and each app keeps its branch."""
    from serverflow.models import App, AppServer, Deployment

    await migrate_before(db_url, tmp_path, 8)
    app_id, server_id, dep_ids = uuid.uuid4(), uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    await db.init_orm(db_url)
    try:
        org = await create_organization("Acme")
        async with scoped(org.id) as conn:
            # Raw SQL: the current models have columns this old schema lacks.
            await conn.execute_query(
                "INSERT INTO servers (id, name, description, status, created_at, "
                f"organization_id) VALUES ('{server_id}', 'web-1', '', 'pending', "
                f"CURRENT_TIMESTAMP, '{org.id}')"
            )
            await conn.execute_query(
                "INSERT INTO apps (id, name, repo_url, branch, env_encrypted, health_path, "
                "health_timeout_s, domains, tls, runtime, keep_releases, "
                "webhook_secret_encrypted, created_at, updated_at, organization_id) VALUES "
                f"('{app_id}', 'shop', '/srv/shop.git', 'trunk', '', '/', 60, '[]', true, "
                f"'pm2', 5, '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{org.id}')"
            )
            for number, (dep_id, branch) in enumerate(zip(dep_ids, ("trunk", ""), strict=True)):
                await conn.execute_query(
                    "INSERT INTO deployments (id, number, kind, branch, env_encrypted, "
                    "triggered_by, status, created_at, app_id, server_id, organization_id) "
                    f"VALUES ('{dep_id}', {number + 1}, 'deploy', '{branch}', '', 'test', "
                    f"'live', CURRENT_TIMESTAMP, '{app_id}', '{server_id}', '{org.id}')"
                )
            await conn.execute_query(
                "INSERT INTO app_servers (id, live_deployment_id, app_id, server_id, "
                f"organization_id) VALUES ('{uuid.uuid4()}', '{dep_ids[0]}', '{app_id}', "
                f"'{server_id}', '{org.id}')"
            )
    finally:
        await db.close_orm()

    applied = await db.migrate(db_url)
    assert applied and applied[0].startswith("8_")
    await db.init_orm(db_url)
    try:
        async with scoped(org.id):
            app = await App.get(id=app_id)
            assert app.branch == "trunk" and app.default_branch is None and app.formation == {}
            placement = await AppServer.get(app_id=app_id)
            assert placement.live_deployment_id == dep_ids[0]
            branches = {d.id: d.branch for d in await Deployment.filter(app_id=app_id)}
            assert branches == {dep_ids[0]: "trunk", dep_ids[1]: None}
            await App.filter(id=app_id).update(branch=None)  # now optional
            assert (await App.get(id=app_id)).branch is None
    finally:
        await db.close_orm()


@BOTH_DATABASES
async def test_placements_get_their_public_port_at_their_next_deploy(
    db_url: str, tmp_path: Path
) -> None:
    """Migration 9: placements made before public ports keep their rows with no port yet
    (given at their next deploy); two placements on a server never share one."""
    from tortoise.exceptions import IntegrityError

    from serverflow.deploys.addresses import public_port
    from serverflow.models import AppServer

    await migrate_before(db_url, tmp_path, 9)
    server_id, placements = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    await db.init_orm(db_url)
    try:
        org = await create_organization("Acme")
        async with scoped(org.id) as conn:
            await conn.execute_query(
                "INSERT INTO servers (id, name, description, status, created_at, "
                f"organization_id) VALUES ('{server_id}', 'web-1', '', 'online', "
                f"CURRENT_TIMESTAMP, '{org.id}')"
            )
            for n, placement in enumerate(placements):
                app_id = uuid.uuid4()
                await conn.execute_query(
                    "INSERT INTO apps (id, name, repo_url, env_encrypted, health_path, "
                    "health_timeout_s, domains, tls, runtime, keep_releases, formation, "
                    "webhook_secret_encrypted, created_at, updated_at, organization_id) VALUES "
                    f"('{app_id}', 'app{n}', '/srv/a.git', '', '/', 60, '[]', true, 'pm2', 5, "
                    f"'{{}}', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{org.id}')"
                )
                await conn.execute_query(
                    "INSERT INTO app_servers (id, app_id, server_id, organization_id) VALUES "
                    f"('{placement}', '{app_id}', '{server_id}', '{org.id}')"
                )
    finally:
        await db.close_orm()

    applied = await db.migrate(db_url)
    assert applied and applied[0].startswith("9_")
    await db.init_orm(db_url)
    try:
        async with scoped(org.id):
            server = await Server.get(id=server_id)
            assert server.address is None and server.last_public_port is None
            rows = [await AppServer.get(id=p) for p in placements]
            assert [(r.public_port, r.public_port_served) for r in rows] == [(None, False)] * 2
            assert await public_port(rows[0], (9000, 9009)) == 9000
        with pytest.raises(IntegrityError):
            async with scoped(org.id):
                await AppServer.filter(id=placements[1]).update(public_port=9000)
    finally:
        await db.close_orm()
