"""The audit log: append-only and tamper-evident, one hash chain per organisation, and
one for the instance (`INSTANCE`): what instance operators did, and security refusals that
cannot be tied to an organisation.

Every entry carries the hash of the previous one, so editing or deleting a row breaks the
chain at that row (`serverflow audit verify` names it). Triggers refuse UPDATE and DELETE
in the database too, except for retention pruning, which leaves a marker entry naming
the last pruned hash so the chain stays checkable from there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from serverflow.models import AuditEntry, InstanceAuditEntry, Organization
from serverflow.tenancy import is_postgres, scoped
from serverflow_contract import protocol

# The id of the instance's chain. Organisations have random (version 4) ids: never this.
INSTANCE = uuid.UUID(int=0)

GENESIS = "0" * 64
REDACTED = "********"
SECRET_KEYS = re.compile(r"(?i)(pass(word)?|secret|token|api[_-]?key|private|credential|env)")
# A token's id and name identify it without being it: they stay readable, or nobody could
# tell which token an entry is about. Kept narrow on purpose: elsewhere a "secret_id" can
# be a credential (Vault's AppRole), so only the token's own labels are let through.
LABEL_KEYS = re.compile(r"(?i)^token[_-]?(id|ids|name)$")
PRUNE_ACTION = "audit.pruned"
log = logging.getLogger(__name__)

# One writer per chain within a process. Locks belong to the event loop that runs the
# writers: a lock left held by a loop that has ended (a test's, or a server restarted in
# the same process) must not block, or break, the writers of the next one.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[uuid.UUID, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _lock(chain: uuid.UUID) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    per_loop = _locks.get(loop)
    if per_loop is None:
        per_loop = _locks[loop] = defaultdict(asyncio.Lock)
    return per_loop[chain]


Entry = AuditEntry  # an InstanceAuditEntry has the same columns, but no organisation


def _model(chain: uuid.UUID) -> type[AuditEntry]:
    return cast(type[AuditEntry], InstanceAuditEntry) if chain == INSTANCE else AuditEntry


def _transaction(chain: uuid.UUID) -> AbstractAsyncContextManager[BaseDBAsyncClient]:
    """The instance chain belongs to no organisation; an organisation's is read in its scope."""
    return in_transaction() if chain == INSTANCE else scoped(chain)


def chain_name(chain: uuid.UUID) -> str:
    return "instance" if chain == INSTANCE else str(chain)


# The hash is over canonical JSON (RFC 8785), which holds only what an IEEE double can:
# a number beyond that (a client may send one) is kept as its decimal text instead.
SAFE_INTEGER = 2**53 - 1


def redact(value: Any, key: str = "") -> Any:
    """A copy of `value` with anything that looks secret replaced (by key name or form),
    and numbers canonical JSON cannot hold written as text."""
    secret_key = bool(key) and bool(SECRET_KEYS.search(key)) and not LABEL_KEYS.search(key)
    if secret_key and not isinstance(value, dict | list):
        return REDACTED
    if isinstance(value, dict):
        if secret_key:  # e.g. env: keep the names, hide the values
            return {k: REDACTED for k in value}
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str) and re.match(r"^sfi?_[0-9a-f]{32}_", value):
        return REDACTED
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SAFE_INTEGER:
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def entry_hash(
    org_id: uuid.UUID,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    details: Any,
    outcome: str,
    prev_hash: str,
) -> str:
    body = {
        "org": str(org_id),
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(),
        "actor": actor,
        "action": action,
        "target": target,
        "details": details,
        "outcome": outcome,
        "prev": prev_hash,
    }
    return hashlib.sha256(protocol.canonical(body)).hexdigest()


@dataclass(frozen=True)
class Record:
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    outcome: str = "ok"


async def append(org_id: uuid.UUID, *records: Record) -> list[Entry]:
    """Append entries to the organisation's chain (or the instance's, `INSTANCE`), in
    order, in one transaction."""
    if not records:
        return []
    model = _model(org_id)
    async with _lock(org_id), _transaction(org_id) as conn:
        if is_postgres(conn):  # several control-plane instances: one writer per chain
            await conn.execute_query(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [str(org_id)]
            )
        last = await model.all().order_by("-seq").only("seq", "hash").first()
        seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
        entries = []
        for record in records:
            seq += 1
            now = datetime.now(UTC)  # milliseconds: every database keeps them exactly
            at = now.replace(microsecond=now.microsecond // 1000 * 1000)
            details = redact(record.details)
            digest = entry_hash(
                org_id,
                seq,
                at,
                record.actor[:300],
                record.action[:100],
                record.target[:500],
                details,
                record.outcome[:32],
                prev,
            )
            fields: dict[str, Any] = {} if org_id == INSTANCE else {"organization_id": org_id}
            entries.append(
                model(
                    **fields,
                    seq=seq,
                    at=at,
                    actor=record.actor[:300],
                    action=record.action[:100],
                    target=record.target[:500],
                    details=details,
                    outcome=record.outcome[:32],
                    prev_hash=prev,
                    hash=digest,
                )
            )
            prev = digest
        await model.bulk_create(entries)
    return entries


@dataclass(frozen=True)
class Verdict:
    org_id: uuid.UUID
    entries: int
    broken_seq: int | None = None
    broken_id: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


async def verify(org_id: uuid.UUID) -> Verdict:
    """Walk the chain; the first entry whose content, order or link does not check out."""
    async with _transaction(org_id):
        rows = await _model(org_id).all().order_by("seq")
    expected_seq, prev = 1, GENESIS
    if rows and rows[0].seq != 1:
        # Retention removed the oldest entries: the first remaining one must continue
        # the chain recorded by the latest prune marker.
        marker = next((r for r in reversed(rows) if r.action == PRUNE_ACTION), None)
        if marker is None or marker.details.get("next_seq") != rows[0].seq:
            return Verdict(
                org_id,
                len(rows),
                rows[0].seq,
                rows[0].id,
                "entries before this one are missing (and no pruning recorded)",
            )
        expected_seq, prev = rows[0].seq, str(marker.details.get("last_hash"))
    for row in rows:
        if row.seq != expected_seq:
            return Verdict(
                org_id,
                len(rows),
                expected_seq,
                row.id,
                f"entry #{expected_seq} is missing (found #{row.seq} next)",
            )
        if row.prev_hash != prev:
            return Verdict(
                org_id,
                len(rows),
                row.seq,
                row.id,
                "its link to the previous entry does not match (edited or removed)",
            )
        digest = entry_hash(
            org_id,
            row.seq,
            row.at,
            row.actor,
            row.action,
            row.target,
            row.details,
            row.outcome,
            row.prev_hash,
        )
        if digest != row.hash:
            return Verdict(
                org_id, len(rows), row.seq, row.id, "its content does not match its hash (edited)"
            )
        expected_seq, prev = row.seq + 1, row.hash
    return Verdict(org_id, len(rows))


async def verify_all(org_ids: Iterable[uuid.UUID] | None = None) -> list[Verdict]:
    """Every chain given; by default the instance's and every organisation's."""
    if org_ids is None:
        org_ids = [INSTANCE, *(o.id for o in await Organization.all().order_by("created_at"))]
    return [await verify(org_id) for org_id in org_ids]


async def page(
    before: int | None = None,
    limit: int = 100,
    actor: str | None = None,
    action: str | None = None,
    chain: uuid.UUID | None = None,
) -> list[Entry]:
    """Entries of the current scope's organisation (or of `chain`: `INSTANCE`), newest
    first: those with a sequence number below `before`, whose actor contains `actor` and
    whose action starts with `action`."""
    query = _model(chain).all() if chain is not None else AuditEntry.all()
    if before is not None:
        query = query.filter(seq__lt=before)
    if actor:
        query = query.filter(actor__icontains=actor)
    if action:
        query = query.filter(action__startswith=action)
    return await query.order_by("-seq").limit(limit)


async def export(org_id: uuid.UUID, since: datetime | None = None) -> AsyncIterator[dict[str, Any]]:
    async with _transaction(org_id):
        query = _model(org_id).all().order_by("seq")
        if since is not None:
            query = query.filter(at__gte=since)
        rows = await query
    for row in rows:
        yield {
            "seq": row.seq,
            "at": row.at.astimezone(UTC).isoformat(),
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "details": row.details,
            "outcome": row.outcome,
            "prev_hash": row.prev_hash,
            "hash": row.hash,
            "organization_id": chain_name(org_id),
        }


async def prune(org_id: uuid.UUID, older_than_days: int) -> int:
    """Apply retention: drop entries older than the limit, leaving a marker entry."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    model = _model(org_id)
    table = model._meta.db_table
    async with _lock(org_id), _transaction(org_id) as conn:
        old = await model.filter(at__lt=cutoff).order_by("-seq").first()
        if old is None:
            return 0
        count = await model.filter(seq__lte=old.seq).count()
        if is_postgres(conn):
            await conn.execute_query("SELECT set_config('app.audit_prune', 'on', true)")
            await model.filter(seq__lte=old.seq).delete()
        else:  # SQLite has no session settings: lift the trigger inside this transaction
            await conn.execute_query(f'DROP TRIGGER IF EXISTS "{table}_no_delete"')
            await model.filter(seq__lte=old.seq).delete()
            await conn.execute_query(
                f'CREATE TRIGGER "{table}_no_delete" BEFORE DELETE ON "{table}" '
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    await append(
        org_id,
        Record(
            "system",
            PRUNE_ACTION,
            f"entries up to #{old.seq}",
            {
                "removed": count,
                "next_seq": old.seq + 1,
                "last_hash": old.hash,
                "retention_days": older_than_days,
            },
        ),
    )
    return int(count)


async def retention_loop(days: int, every_s: float = 6 * 3600) -> None:
    """Prune every organisation's log to the retention period, now and then."""
    while True:
        try:
            for org_id in [INSTANCE, *(o.id for o in await Organization.all())]:
                removed = await prune(org_id, days)
                if removed:
                    log.info(
                        "audit retention: removed %d entries of %s", removed, chain_name(org_id)
                    )
        except Exception:
            log.exception("audit retention failed")
        await asyncio.sleep(every_s)
