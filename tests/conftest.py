"""Fixtures of this repository's own tests: an in-process control plane, tenants, data.

The real components (PostgreSQL, pm2, nginx, ...) come from serverflow-testkit, the
pytest plugin in testkit/ (`postgres` and `pg_url` included).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from serverflow import db
from serverflow.accounts import add_member, create_organization, create_user, issue_token
from serverflow.app import create_app
from serverflow.models import Organization, Role, User
from serverflow.plugins import Plugins
from serverflow.settings import Settings, load_settings

PASSWORD = "correct horse battery staple"
# An agent plugin with test.* actions (touch, sleep, allocate, fail, echo), for
# serverflow_testkit.protocol_peer.install_agent_plugin.
AGENT_TEST_PLUGIN = Path(__file__).resolve().parent / "data" / "agent_test_plugin"


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite by default; parametrize with indirect=True and "postgres" for PostgreSQL."""
    kind = getattr(request, "param", "sqlite")
    if kind == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite://{tmp_path / 'serverflow.sqlite3'}"


BOTH_DATABASES = pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def make_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    return load_settings(environ={}, data_dir=tmp_path / "data", database_url=db_url, **overrides)


@dataclass
class Tenant:
    org: Organization
    owner: User
    tokens: dict[Role, str] = field(default_factory=dict)

    def auth(self, role: Role = Role.OWNER) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@dataclass
class ControlPlaneUnderTest:
    app: Quart
    settings: Settings
    db_url: str

    def client(self) -> TestClientProtocol:
        return self.app.test_client()

    async def tenant(self, name: str) -> Tenant:
        """An organisation with an owner (password PASSWORD) and a token for every role."""
        org = await create_organization(name)
        email = f"owner-{uuid.uuid4().hex[:8]}@{org.slug}.test"
        owner = await create_user(email, PASSWORD)
        await add_member(org, owner, Role.OWNER)
        tenant = Tenant(org=org, owner=owner)
        for role in Role:
            tenant.tokens[role] = (await issue_token(org.id, f"{role}-token", role)).value
        return tenant

    async def operator(self, tenant: Tenant) -> dict[str, str]:
        """Make the tenant's owner an instance operator; headers of a token acting as one."""
        await User.filter(id=tenant.owner.id).update(is_operator=True)
        issued = await issue_token(
            tenant.org.id, "operator-token", Role.OWNER, created_by=tenant.owner, operator=True
        )
        return {"Authorization": f"Bearer {issued.value}"}

    async def user(self, tenant: Tenant, role: Role) -> User:
        user = await create_user(f"{role}-{uuid.uuid4().hex[:8]}@{tenant.org.slug}.test", PASSWORD)
        await add_member(tenant.org, user, role)
        return user


@asynccontextmanager
async def control_plane_with(
    db_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[ControlPlaneUnderTest]:
    """An in-process control plane with these settings changed (e.g. a low rate limit)."""
    settings = make_settings(tmp_path, db_url, **overrides)
    await db.migrate(db_url)
    app = create_app(settings, plugins=Plugins(disabled=settings.disabled_plugins))
    async with app.test_app() as test_app:
        yield ControlPlaneUnderTest(app=test_app.app, settings=settings, db_url=db_url)


@pytest.fixture
async def control_plane(db_url: str, tmp_path: Path) -> AsyncIterator[ControlPlaneUnderTest]:
    async with control_plane_with(db_url, tmp_path) as cp:
        yield cp


async def sign_in(client: TestClientProtocol, email: str, password: str = PASSWORD) -> str:
    """Sign in through the login form; returns the CSRF token for later unsafe requests."""
    page = await (await client.get("/login")).get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = await client.post(
        "/login", form={"csrf_token": csrf, "email": email, "password": password}
    )
    assert response.status_code == 302, await response.get_data(as_text=True)
    return csrf
