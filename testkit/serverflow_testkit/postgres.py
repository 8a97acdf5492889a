"""PostgreSQL: the machine's server at 127.0.0.1:5432 if it answers, else a throwaway cluster.

Each test gets its own database owned by its own NOSUPERUSER NOBYPASSRLS role, exactly
how production is meant to run (superusers bypass row-level security).
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg

from serverflow_testkit import free_port, missing

DEFAULT_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def afetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def aexecute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def run_sql(dsn: str, *statements: str) -> None:
    asyncio.run(aexecute(dsn, *statements))


def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    return asyncio.run(afetch(dsn, sql, *args))


def _reachable(dsn: str) -> bool:
    try:
        fetch(dsn, "SELECT 1")
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    return True


@dataclass
class PostgresServer:
    admin_dsn: str
    process: subprocess.Popen[bytes] | None = None
    directory: str | None = None

    def dsn(self, user: str, database: str) -> str:
        base = self.admin_dsn.rsplit("/", 1)[0]
        host = base.split("@", 1)[1]
        return f"postgresql://{user}@{host}/{database}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _throwaway_cluster() -> PostgresServer:
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        missing("PostgreSQL", f"nothing answers at {DEFAULT_ADMIN} and initdb is not installed")
    bindir = bindirs[-1]
    base = tempfile.mkdtemp(prefix="sf-pg-")
    shutil.chown(base, "postgres")
    data = os.path.join(base, "data")
    port = free_port()
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{bindir}/initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        cwd="/tmp",
    )
    process = subprocess.Popen(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{bindir}/postgres",
            "-D",
            data,
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(port),
            "-k",
            base,
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/tmp",
    )
    server = PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", process, base)
    for _ in range(100):
        if _reachable(server.admin_dsn):
            return server
        if process.poll() is not None:
            break
        asyncio.run(asyncio.sleep(0.1))
    server.stop()
    missing("PostgreSQL", "the throwaway cluster did not start")
    raise AssertionError("unreachable")


def start_postgres() -> PostgresServer:
    admin = os.environ.get("SERVERFLOW_TEST_PG_ADMIN", DEFAULT_ADMIN)
    if _reachable(admin):
        return PostgresServer(admin)
    return _throwaway_cluster()


@contextmanager
def app_database(server: PostgresServer) -> Iterator[str]:
    """A fresh database owned by a fresh non-superuser role; yields the app's URL."""
    name = "sf_test_" + uuid.uuid4().hex[:12]
    run_sql(
        server.admin_dsn,
        f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE',
        f'CREATE DATABASE "{name}" OWNER "{name}"',
    )
    try:
        yield server.dsn(name, name)
    finally:
        run_sql(
            server.admin_dsn,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            f'DROP DATABASE IF EXISTS "{name}"',
            f'DROP ROLE IF EXISTS "{name}"',
        )
