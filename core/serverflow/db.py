"""Database connection, migrations (aerich) and the PostgreSQL role check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tortoise import Tortoise, connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import _current_context

from serverflow import db_guard
from serverflow.errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)
db_guard.install()

MODEL_MODULES = ["serverflow.models", "aerich.models"]
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def dialect_of(url: str) -> str:
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith(("postgres://", "postgresql://", "asyncpg://")):
        return "postgres"
    raise ConfigError(
        f"unsupported database URL scheme in {url.split(':', 1)[0]!r}; "
        "use sqlite:///path or postgres://user@host/db"
    )


def prepare(url: str) -> None:
    """Create the directory of an SQLite file (a missing one makes aerich hang, not fail)."""
    if dialect_of(url) == "sqlite":
        path = url.split("://", 1)[1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


DEFAULT_POOL_MAXSIZE = 20


def tortoise_config(url: str) -> dict[str, Any]:
    if url.startswith("postgresql://"):
        url = "postgres://" + url[len("postgresql://") :]
    # Tortoise caches prepared SQL per connection name, not per dialect: naming the
    # connection after its dialect keeps SQLite and PostgreSQL apart in one process.
    name = dialect_of(url)
    if name == "postgres" and "maxsize=" not in url.partition("?")[2]:
        # Tortoise's default pool is 5 connections: thousands of agents handshaking on one
        # instance queued for them past the handshake timeout. `?maxsize=N` overrides.
        url += ("&" if "?" in url else "?") + f"maxsize={DEFAULT_POOL_MAXSIZE}"
    return {
        "connections": {name: url},
        "apps": {"models": {"models": MODEL_MODULES, "default_connection": name}},
        "use_tz": True,
        "timezone": "UTC",
    }


def migrations_location(url: str) -> Path:
    """aerich keeps one migration history per dialect: the SQL differs."""
    return MIGRATIONS_DIR / dialect_of(url)


async def check_role(url: str) -> None:
    """Refuse a PostgreSQL role that would silently bypass row-level security."""
    if dialect_of(url) != "postgres":
        return
    conn = connections.get(dialect_of(url))
    _, rows = await conn.execute_query(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    if rows and (rows[0]["rolsuper"] or rows[0]["rolbypassrls"]):
        raise ConfigError(
            "the database role in SERVERFLOW_DATABASE_URL is a superuser or has BYPASSRLS, "
            "so row-level security would not protect tenants. Create a dedicated role: "
            "CREATE ROLE serverflow LOGIN PASSWORD '...' NOSUPERUSER NOBYPASSRLS; "
            "CREATE DATABASE serverflow OWNER serverflow;",
            code="DB002",
        )


async def init_orm(url: str) -> None:
    prepare(url)
    await Tortoise.init(config=tortoise_config(url), _enable_global_fallback=True)
    try:
        await check_role(url)
    except OSError as exc:
        await close_orm()
        raise DatabaseError(f"cannot connect to the database: {exc}") from exc
    except ConfigError:
        await close_orm()
        raise


async def close_orm() -> None:
    await Tortoise.close_connections()
    # A closed Tortoise context still says "initialised", and aerich would then skip its
    # own init and query through a context without connections: start the next from zero.
    _current_context.set(None)


def connection() -> BaseDBAsyncClient:
    """The control plane's single database connection (or pool)."""
    return connections.get(next(iter(connections.db_config)))


async def ping() -> bool:
    try:
        await connection().execute_query("SELECT 1")
    except Exception:
        log.warning("database ping failed", exc_info=True)
        return False
    return True


async def migrate(url: str, location: Path | None = None) -> list[str]:
    """Apply pending migrations; returns the names of those applied. Keeps existing data."""
    from aerich import Command

    prepare(url)
    command = Command(
        tortoise_config=tortoise_config(url),
        app="models",
        location=str(location or migrations_location(url)),
    )
    try:
        await command.init()
        await check_role(url)
        return await command.upgrade(run_in_transaction=True)
    except OSError as exc:
        raise DatabaseError(f"cannot connect to the database: {exc}") from exc
    finally:
        await close_orm()
