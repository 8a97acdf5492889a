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
    # An instance operator manages what is shared by every organisation (plugins, the
    # marketplace): a role above organisations, held by the person, not a membership.
    is_operator = fields.BooleanField(default=False)
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
    # MCP: may an assistant using this token apply the changes it planned (dry runs)?
    allow_apply = fields.BooleanField(default=False)
    # Acts as an instance operator too (while its creator, if any, still is one).
    operator = fields.BooleanField(default=False)
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


class SecurityMode(enum.StrEnum):
    """Which kinds of agent actions the organisation lets this server run."""

    FULL = "full"  # read, change and destructive
    STANDARD = "standard"  # read and change
    READ_ONLY = "read-only"


class Server(TenantModel):
    """A machine that runs (or will run) the agent."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    name = fields.CharField(max_length=63)
    description = fields.CharField(max_length=500, default="")
    status = fields.CharEnumField(ServerStatus, max_length=16, default=ServerStatus.PENDING)
    created_at = fields.DatetimeField(auto_now_add=True)
    last_seen_at = fields.DatetimeField(null=True)
    security_mode = fields.CharEnumField(SecurityMode, max_length=16, default=SecurityMode.FULL)
    # One-time install token: SHA-256 of it, its expiry, and when it was used.
    install_token_hash = fields.CharField(max_length=64, null=True, unique=True)
    install_token_expires_at = fields.DatetimeField(null=True)
    registered_at = fields.DatetimeField(null=True)
    agent_public_key = fields.CharField(max_length=64, null=True)
    agent_version = fields.CharField(max_length=40, default="")
    hostname = fields.CharField(max_length=255, default="")
    # The actions the agent reported at its last handshake (name, kind, schema...).
    inventory: Any = fields.JSONField(null=True)
    registry_version = fields.IntField(default=0)
    metrics: Any = fields.JSONField(null=True)
    # Where its apps are reached from outside, as its agent last reported it (the host of
    # the URLs of apps without a domain).
    address = fields.CharField(max_length=255, null=True)
    # The public port last given to an app here: the next one is taken after it, so a
    # deleted app's port goes to a new app only once the range has come round.
    last_public_port = fields.IntField(null=True)

    class Meta:
        table = "servers"
        unique_together = (("organization", "name"),)
        manager = TenantManager()


class CommandStatus(enum.StrEnum):
    SENT = "sent"
    OK = "ok"
    ERROR = "error"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNDELIVERED = "undelivered"


class Command(TenantModel):
    """A signed command sent to an agent, and the signed result it reported."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    server: fields.ForeignKeyRelation[Server] = fields.ForeignKeyField(
        "models.Server", related_name=False, on_delete=fields.CASCADE
    )
    server_id: uuid.UUID
    action = fields.CharField(max_length=100)
    kind = fields.CharField(max_length=16)
    params: Any = fields.JSONField(default=dict)
    issued_by = fields.CharField(max_length=300)
    issued_at = fields.BigIntField()
    expires_at = fields.BigIntField()
    nonce = fields.CharField(max_length=64)
    signing_key_id = fields.CharField(max_length=16)
    status = fields.CharEnumField(CommandStatus, max_length=16, default=CommandStatus.SENT)
    code = fields.CharField(max_length=16, null=True)
    message = fields.TextField(null=True)
    output: Any = fields.JSONField(null=True)
    result_signature = fields.CharField(max_length=100, null=True)
    # The exact result body the agent signed, so the signature can be checked again later.
    result_body: Any = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "commands"
        manager = TenantManager()


class Heartbeat(TenantModel):
    """Metrics an agent reported; a bounded history per server."""

    id = fields.BigIntField(primary_key=True)
    server: fields.ForeignKeyRelation[Server] = fields.ForeignKeyField(
        "models.Server", related_name=False, on_delete=fields.CASCADE
    )
    server_id: uuid.UUID
    at = fields.DatetimeField(db_index=True)
    metrics: Any = fields.JSONField()

    class Meta:
        table = "heartbeats"
        manager = TenantManager()


class Event(TenantModel):
    """Something that happened: a server came online or went offline, an agent registered..."""

    id = fields.BigIntField(primary_key=True)
    server: fields.ForeignKeyNullableRelation[Server] = fields.ForeignKeyField(
        "models.Server", related_name=False, null=True, on_delete=fields.CASCADE
    )
    server_id: uuid.UUID | None
    kind = fields.CharField(max_length=64)
    data: Any = fields.JSONField(default=dict)
    at = fields.DatetimeField(auto_now_add=True, db_index=True)

    class Meta:
        table = "events"
        manager = TenantManager()


class SigningKey(Model):
    """The control plane's Ed25519 signing keys; the newest unretired one signs."""

    id = fields.IntField(primary_key=True)
    public_key = fields.CharField(max_length=64, unique=True)
    private_key = fields.TextField()  # encrypted with the data directory's key
    previous_public_key = fields.CharField(max_length=64, null=True)
    # key_rotation frame body + signature by the previous key, replayed to late agents.
    announcement: Any = fields.JSONField(null=True)
    announcement_sig = fields.CharField(max_length=100, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    retired_at = fields.DatetimeField(null=True)

    class Meta:
        table = "signing_keys"


class App(TenantModel):
    """An application: a git repository deployed to one or more servers."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    name = fields.CharField(max_length=63)
    repo_url = fields.CharField(max_length=1000)
    branch = fields.CharField(max_length=255, null=True)  # null: the repository's default
    # The repository's default branch as the last deploy of the default found it.
    default_branch = fields.CharField(max_length=255, null=True)
    build_commands: Any = fields.JSONField(null=True)  # list of argv lists; null: detect
    start_command: Any = fields.JSONField(null=True)  # argv; null: detect
    port = fields.IntField(null=True)  # fixed port; null: a fresh one per release
    env_encrypted = fields.TextField(default="")  # JSON object, encrypted (keys.Cipher)
    health_path = fields.CharField(max_length=255, default="/")
    health_timeout_s = fields.IntField(default=60)
    domains: Any = fields.JSONField(default=list)
    tls = fields.BooleanField(default=True)
    runtime = fields.CharField(max_length=40, default="pm2")
    keep_releases = fields.IntField(default=5)
    # Processes per Procfile type other than web, {type: count}; a type not named runs 1.
    formation: Any = fields.JSONField(default=dict)
    webhook_secret_encrypted = fields.TextField(default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "apps"
        unique_together = (("organization", "name"),)
        manager = TenantManager()


class AppServer(TenantModel):
    """An app placed on a server, and the deployment live there."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    app: fields.ForeignKeyRelation[App] = fields.ForeignKeyField(
        "models.App", related_name=False, on_delete=fields.CASCADE
    )
    app_id: uuid.UUID
    server: fields.ForeignKeyRelation[Server] = fields.ForeignKeyField(
        "models.Server", related_name=False, on_delete=fields.CASCADE
    )
    server_id: uuid.UUID
    live_deployment_id = fields.UUIDField(null=True)
    # The app's stable address on the server, for as long as the app is placed there: the
    # port nginx listens on for it (given at its first deploy without a domain).
    public_port = fields.IntField(null=True)
    # Whether the live release is served on it (not when nginx is not set up there).
    public_port_served = fields.BooleanField(default=False)

    class Meta:
        table = "app_servers"
        unique_together = (("app", "server"), ("server", "public_port"))
        manager = TenantManager()


class DeploymentStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    LIVE = "live"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # was live; a later deployment replaced it


class Deployment(TenantModel):
    """One deploy (or rollback) of an app to one server: what, why, how it went."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    app: fields.ForeignKeyRelation[App] = fields.ForeignKeyField(
        "models.App", related_name=False, on_delete=fields.CASCADE
    )
    app_id: uuid.UUID
    server: fields.ForeignKeyRelation[Server] = fields.ForeignKeyField(
        "models.Server", related_name=False, on_delete=fields.CASCADE
    )
    server_id: uuid.UUID
    number = fields.IntField()  # per app and server: 1, 2, 3...
    kind = fields.CharField(max_length=16, default="deploy")  # deploy | rollback | config
    # The branch deployed; null until the repository's default branch is resolved (and for
    # an exact commit of an app that follows the default branch).
    branch = fields.CharField(max_length=255, null=True)
    commit_sha = fields.CharField(max_length=40, null=True)
    release = fields.CharField(max_length=64, null=True)
    spec: Any = fields.JSONField(null=True)  # the app entry sent to the agent (env omitted)
    env_encrypted = fields.TextField(default="")  # the env it was deployed with (snapshot)
    triggered_by = fields.CharField(max_length=300)
    status = fields.CharEnumField(DeploymentStatus, max_length=16, default=DeploymentStatus.QUEUED)
    reason = fields.TextField(null=True)
    command_id = fields.UUIDField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)
    duration_ms = fields.IntField(null=True)

    class Meta:
        table = "deployments"
        unique_together = (("app", "server", "number"),)
        manager = TenantManager()


class DeploymentLog(TenantModel):
    """One line of a deployment's log, as the agent streamed it."""

    id = fields.BigIntField(primary_key=True)
    deployment: fields.ForeignKeyRelation[Deployment] = fields.ForeignKeyField(
        "models.Deployment", related_name=False, on_delete=fields.CASCADE
    )
    deployment_id: uuid.UUID
    seq = fields.IntField()
    at = fields.DatetimeField()
    stage = fields.CharField(max_length=40, default="")
    line = fields.TextField()

    class Meta:
        table = "deployment_logs"
        manager = TenantManager()


class ServerState(TenantModel):
    """The desired-state version of a server, as docs on deploys describe it."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    server: fields.ForeignKeyRelation[Server] = fields.ForeignKeyField(
        "models.Server", related_name=False, on_delete=fields.CASCADE, unique=True
    )
    server_id: uuid.UUID
    version = fields.IntField(default=0)
    hash = fields.CharField(max_length=64, default="")
    applied_hash = fields.CharField(max_length=64, default="")

    class Meta:
        table = "server_states"
        manager = TenantManager()


class AuditEntry(TenantModel):
    """One entry of the organisation's append-only, hash-chained audit log."""

    id = fields.BigIntField(primary_key=True)
    seq = fields.BigIntField()  # 1, 2, 3... per organisation, no gaps
    at = fields.DatetimeField()
    actor = fields.CharField(max_length=300)  # user:EMAIL, token:NAME, webhook:github, system
    action = fields.CharField(max_length=100)
    target = fields.CharField(max_length=500)
    details: Any = fields.JSONField(default=dict)  # secrets redacted
    outcome = fields.CharField(max_length=32)  # ok, or an error code
    prev_hash = fields.CharField(max_length=64)
    hash = fields.CharField(max_length=64)

    class Meta:
        table = "audit_log"
        unique_together = (("organization", "seq"),)
        manager = TenantManager()


class InstanceAuditEntry(Model):
    """One entry of the instance's own chain: what instance operators did, and refusals
    that cannot be tied to an organisation (unknown agents, forged install tokens...)."""

    id = fields.BigIntField(primary_key=True)
    seq = fields.BigIntField(unique=True)  # 1, 2, 3... no gaps
    at = fields.DatetimeField()
    actor = fields.CharField(max_length=300)
    action = fields.CharField(max_length=100)
    target = fields.CharField(max_length=500)
    details: Any = fields.JSONField(default=dict)  # secrets redacted
    outcome = fields.CharField(max_length=32)
    prev_hash = fields.CharField(max_length=64)
    hash = fields.CharField(max_length=64)

    class Meta:
        table = "instance_audit_log"


class PlanStatus(enum.StrEnum):
    PENDING = "pending"  # a dry run, waiting to be applied (change) or confirmed (destructive)
    CONFIRMED = "confirmed"  # a person confirmed a destructive plan; it is being applied
    APPLIED = "applied"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Plan(TenantModel):
    """A change an assistant proposed: shown as a dry run, applied once, or confirmed."""

    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    kind = fields.CharField(max_length=16)  # change | destructive
    tool = fields.CharField(max_length=100)
    summary = fields.TextField()
    params_encrypted = fields.TextField()  # the exact call to apply (may hold secrets)
    preview: Any = fields.JSONField(default=dict)  # what would happen (secrets redacted)
    status = fields.CharEnumField(PlanStatus, max_length=16, default=PlanStatus.PENDING)
    created_by = fields.CharField(max_length=300)
    token_id = fields.UUIDField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField()
    decided_by = fields.CharField(max_length=300, null=True)
    decided_at = fields.DatetimeField(null=True)
    result: Any = fields.JSONField(null=True)

    class Meta:
        table = "plans"
        manager = TenantManager()


TENANT_MODELS: tuple[type[TenantModel], ...] = (
    Membership,
    ApiToken,
    Server,
    Command,
    Heartbeat,
    Event,
    App,
    AppServer,
    Deployment,
    DeploymentLog,
    ServerState,
    AuditEntry,
    Plan,
)
