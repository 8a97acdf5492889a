"""The one scoping mechanism for tenant data.

Every query on a tenant-owned model goes through `TenantManager`, which filters by the
organisation of the active `Scope` and refuses to run when there is none. `scoped()`
opens the transaction the scope lives in; on PostgreSQL it also sets `app.org_id` /
`app.user_id` for that transaction, which the row-level-security policies read, so a
query that slips past the manager (raw SQL, a bug) still sees only this organisation.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.manager import Manager
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction


class ScopeMissing(RuntimeError):
    """Tenant data was touched outside `scoped()`: a programming error, never user input."""


@dataclass(frozen=True)
class Scope:
    org_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "serverflow_scope", default=None
)


def current_scope() -> Scope | None:
    return _scope.get()


def current_org_id() -> uuid.UUID:
    scope = _scope.get()
    if scope is None or scope.org_id is None:
        raise ScopeMissing("no organisation scope is active")
    return scope.org_id


class TenantManager(Manager):
    """Default manager of tenant-owned models: every queryset is filtered by organisation."""

    def get_queryset(self) -> QuerySet:
        scope = _scope.get()
        if scope is None or scope.org_id is None:
            raise ScopeMissing(f"{self._model.__name__} queried without an organisation scope")
        return QuerySet(self._model).filter(organization_id=scope.org_id)


class MembershipManager(Manager):
    """Memberships are visible by organisation, or by user (to list a user's organisations)."""

    def get_queryset(self) -> QuerySet:
        scope = _scope.get()
        if scope is not None and scope.org_id is not None:
            return QuerySet(self._model).filter(organization_id=scope.org_id)
        if scope is not None and scope.user_id is not None:
            return QuerySet(self._model).filter(user_id=scope.user_id)
        raise ScopeMissing("Membership queried without an organisation or user scope")


def is_postgres(conn: BaseDBAsyncClient) -> bool:
    return conn.capabilities.dialect == "postgres"


async def _apply_settings(conn: BaseDBAsyncClient, scope: Scope) -> None:
    if is_postgres(conn):
        await conn.execute_query(
            "SELECT set_config('app.org_id', $1, true), set_config('app.user_id', $2, true)",
            [str(scope.org_id or ""), str(scope.user_id or "")],
        )


@asynccontextmanager
async def scoped(
    org_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None
) -> AsyncIterator[BaseDBAsyncClient]:
    """Run the block in one transaction scoped to an organisation (and/or a user)."""
    new = Scope(org_id=org_id, user_id=user_id)
    outer = _scope.get()
    if outer is not None:
        if outer.org_id is not None and org_id is not None and outer.org_id != org_id:
            raise ScopeMissing("cannot nest scopes of two different organisations")
        new = Scope(org_id=org_id or outer.org_id, user_id=user_id or outer.user_id)
    token = _scope.set(new)
    try:
        async with in_transaction() as conn:
            if new != outer:
                await _apply_settings(conn, new)
            yield conn
            if outer is not None and new != outer:
                # SET LOCAL outlives a released savepoint: give the outer block its scope back.
                await _apply_settings(conn, outer)
    finally:
        _scope.reset(token)


def stamp_organization(instance: Any) -> None:
    """Give a new tenant object the scope's organisation; refuse a foreign one."""
    org_id = current_org_id()
    current = getattr(instance, "organization_id", None)
    if current is None:
        instance.organization_id = org_id
    elif current != org_id:
        raise ScopeMissing("object belongs to another organisation than the active scope")
