"""Database models. Tenant-owned models carry `organization` and use `TenantManager`."""

from __future__ import annotations

import enum
import uuid
from typing import Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model

from serverflow.tenancy import MembershipManager, TenantManager, stamp_organization


class Role(enum.StrEnum):
    """Roles within an organisation, weakest first."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class Organization(Model):
    """A tenant. Everything a customer owns hangs off one of these."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    name = fields.CharField(max_length=100)
    slug = fields.CharField(max_length=64, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "organizations"


class User(Model):
    """A person; belongs to organisations through memberships."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    email = fields.CharField(max_length=254, unique=True)
    name = fields.CharField(max_length=100, default="")
    password_hash = fields.CharField(max_length=255)
    is_active = fields.BooleanField(default=True)
    locale = fields.CharField(max_length=16, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    last_login_at = fields.DatetimeField(null=True)

    class Meta:
        table = "users"


class UserSession(Model):
    """A browser session; the cookie holds a random token, this row its hash."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name=False, on_delete=fields.CASCADE
    )
    token_hash = fields.CharField(max_length=64, unique=True)
    current_org_id = fields.UUIDField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField()

    class Meta:
        table = "user_sessions"


class LoginFailure(Model):
    """One failed sign-in, kept for throttling; never holds the password tried."""

    id = fields.BigIntField(primary_key=True)
    email = fields.CharField(max_length=254, db_index=True)
    ip = fields.CharField(max_length=64, db_index=True)
    at = fields.DatetimeField(auto_now_add=True, db_index=True)

    class Meta:
        table = "login_failures"


class TenantModel(Model):
    """Base of every tenant-owned model."""

    organization: fields.ForeignKeyRelation[Organization] = fields.ForeignKeyField(
        "models.Organization", related_name=False, on_delete=fields.CASCADE
    )
    organization_id: uuid.UUID

    class Meta:
        abstract = True

    async def save(
        self,
        using_db: BaseDBAsyncClient | None = None,
        update_fields: Any = None,
        force_create: bool = False,
        force_update: bool = False,
    ) -> None:
        stamp_organization(self)
        await super().save(
            using_db=using_db,
            update_fields=update_fields,
            force_create=force_create,
            force_update=force_update,
        )


class Membership(TenantModel):
    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name=False, on_delete=fields.CASCADE
    )
    user_id: uuid.UUID
    role = fields.CharEnumField(Role, max_length=16)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "memberships"
        unique_together = (("organization", "user"),)
        manager = MembershipManager()


class ApiToken(TenantModel):
    """A bearer token: shown once, stored as a SHA-256 hash, scoped to an org and a role."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    name = fields.CharField(max_length=100)
    role = fields.CharEnumField(Role, max_length=16)
    token_hash = fields.CharField(max_length=64, unique=True)
    prefix = fields.CharField(max_length=16)
    created_by: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        "models.User", related_name=False, null=True, on_delete=fields.SET_NULL
    )
    created_by_id: uuid.UUID | None
    created_at = fields.DatetimeField(auto_now_add=True)
    last_used_at = fields.DatetimeField(null=True)
    expires_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_tokens"
        manager = TenantManager()


class ServerStatus(enum.StrEnum):
    PENDING = "pending"
    ONLINE = "online"
    OFFLINE = "offline"


class Server(TenantModel):
    """A machine that runs (or will run) the agent."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    name = fields.CharField(max_length=63)
    description = fields.CharField(max_length=500, default="")
    status = fields.CharEnumField(ServerStatus, max_length=16, default=ServerStatus.PENDING)
    created_at = fields.DatetimeField(auto_now_add=True)
    last_seen_at = fields.DatetimeField(null=True)

    class Meta:
        table = "servers"
        unique_together = (("organization", "name"),)
        manager = TenantManager()


TENANT_MODELS: tuple[type[TenantModel], ...] = (Membership, ApiToken, Server)
