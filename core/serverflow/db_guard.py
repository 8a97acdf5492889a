"""Make Tortoise transactions safe against task cancellation.

Quart cancels a request or WebSocket handler when its client goes away. If that happens
while Tortoise is *entering* a transaction (after taking the SQLite lock or a pooled
PostgreSQL connection, before `BEGIN` returned), Tortoise never runs `__aexit__`: the
SQLite lock stays taken forever (every later query hangs) or the pooled connection leaks.
These wrappers undo the half-entered transaction and re-raise. Applied once, on import of
serverflow.db.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tortoise.backends.base.client import TransactionalDBClient, TransactionContextPooled
from tortoise.backends.sqlite.client import SqliteTransactionContext
from tortoise.connection import get_connections


async def _sqlite_enter(self: SqliteTransactionContext) -> TransactionalDBClient:
    await self._trxlock.acquire()
    token = None
    try:
        await self.ensure_connection()
        token = get_connections().set(self.connection_name, self.connection)
        await self.connection.begin()
    except BaseException:
        try:
            raw = getattr(self.connection, "_connection", None)
            if raw is not None and raw.in_transaction:
                with contextlib.suppress(Exception):
                    await raw.rollback()
        finally:
            if token is not None:
                get_connections().reset(token)
            self._trxlock.release()
        raise
    self.token = token
    return self.connection


async def _pooled_enter(self: TransactionContextPooled) -> TransactionalDBClient:
    await self.ensure_connection()
    pool: Any = self.client._parent._pool
    self.client._connection = await pool.acquire()
    token = None
    try:
        token = get_connections().set(self.connection_name, self.client)
        await self.client.begin()
    except BaseException:
        # Releasing to the pool resets the connection (an open transaction is rolled back).
        try:
            if token is not None:
                get_connections().reset(token)
        finally:
            await pool.release(self.client._connection)
        raise
    self.token = token
    return self.client


def install() -> None:
    SqliteTransactionContext.__aenter__ = _sqlite_enter  # type: ignore[method-assign]
    TransactionContextPooled.__aenter__ = _pooled_enter  # type: ignore[method-assign]
