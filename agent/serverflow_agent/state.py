"""The agent's local state in SQLite: replay cache, last signed registry, and a small kv.

Everything here must survive restarts: a nonce forgotten on restart would let an old
command be replayed, and a forgotten registry version would let an older (possibly more
permissive) registry be installed again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_contract import protocol

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay (
    nonce TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    command_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS replay_expires_at ON replay (expires_at);
CREATE TABLE IF NOT EXISTS registry (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    sig TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SignedRegistry:
    """The last `registry` frame accepted from the control plane."""

    version: int
    body: dict[str, Any]
    sig: str

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(self.body.get("actions", []))


class AgentState:
    """One connection to state.sqlite3; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            # Create it 0600 ourselves: sqlite3 would use the umask.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA synchronous = FULL")
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def open(cls, state_dir: Path) -> AgentState:
        from serverflow_agent.config import STATE_FILE

        return cls(state_dir / STATE_FILE)

    def close(self) -> None:
        self._db.close()

    # -- replay cache --------------------------------------------------------------

    def remember_nonce(self, nonce: str, expires_at: int, command_id: str) -> bool:
        """Record a command nonce; False if it was already seen (a replay)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO replay (nonce, expires_at, command_id) VALUES (?, ?, ?)",
            (nonce, expires_at, command_id),
        )
        return cur.rowcount == 1

    def seen_nonce(self, nonce: str) -> bool:
        row = self._db.execute("SELECT 1 FROM replay WHERE nonce = ?", (nonce,)).fetchone()
        return row is not None

    def prune_nonces(self, now: int | None = None) -> int:
        """Forget nonces of commands that freshness rules would refuse anyway."""
        now = protocol.now_ms() if now is None else now
        cur = self._db.execute(
            "DELETE FROM replay WHERE expires_at + ? < ?", (protocol.CLOCK_SKEW_MS, now)
        )
        return cur.rowcount

    def nonce_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM replay").fetchone()[0])

    # -- signed registry -----------------------------------------------------------

    def registry(self) -> SignedRegistry | None:
        row = self._db.execute("SELECT version, body, sig FROM registry WHERE id = 1").fetchone()
        if row is None:
            return None
        return SignedRegistry(version=row[0], body=json.loads(row[1]), sig=row[2])

    def store_registry(self, body: dict[str, Any], sig: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO registry (id, version, body, sig, received_at) "
            "VALUES (1, ?, ?, ?, ?)",
            (body["version"], protocol.canonical(body).decode(), sig, protocol.now_ms()),
        )

    def clear_registry(self) -> None:
        self._db.execute("DELETE FROM registry")

    # -- kv ------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )
