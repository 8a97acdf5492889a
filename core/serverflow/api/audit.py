"""The organisation's audit log: read it page by page, and check its hash chain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from quart_schema import validate_querystring, validate_response

from serverflow import audit
from serverflow.api import bp
from serverflow.api.schemas import ErrorOut
from serverflow.auth import principal, requires
from serverflow.models import Role


class AuditEntryOut(BaseModel):
    seq: int = Field(description="Position in the organisation's chain: 1, 2, 3...")
    at: datetime
    actor: str = Field(description="user:EMAIL, token:NAME, webhook:PROVIDER or system")
    action: str
    target: str
    details: dict[str, Any] = Field(description="What was asked (secrets redacted).")
    outcome: str = Field(description="ok, or the error code it ended with")
    hash: str


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )


class AuditQuery(BaseModel):
    before: int | None = Field(default=None, ge=1, description="Entries older than this seq.")
    limit: int = Field(default=100, ge=1, le=500)
    actor: str | None = Field(default=None, max_length=300, description="Actor contains this.")
    action: str | None = Field(
        default=None, max_length=100, description="Action starts with this (e.g. `api.`)."
    )


class AuditVerdictOut(BaseModel):
    ok: bool
    entries: int = Field(description="How many entries were checked.")
    broken_seq: int | None = Field(description="The first entry that does not check out.")
    problem: str | None


@bp.get("/audit")
@requires(Role.VIEWER)
@validate_querystring(AuditQuery)
@validate_response(AuditPage)
async def list_audit(query_args: AuditQuery) -> AuditPage:
    """Who did what: the audit log, newest first."""
    q = query_args
    rows = await audit.page(q.before, q.limit, q.actor, q.action)
    entries = [AuditEntryOut.model_validate(row, from_attributes=True) for row in rows]
    more = len(rows) == q.limit and rows[-1].seq > 1
    return AuditPage(entries=entries, next_before=rows[-1].seq if more else None)


@bp.get("/audit/verify")
@requires(Role.VIEWER)
@validate_response(AuditVerdictOut)
@validate_response(ErrorOut, 403)
async def verify_audit() -> AuditVerdictOut:
    """Check the whole hash chain (as `serverflow audit verify` does)."""
    verdict = await audit.verify(principal().org_id)
    return AuditVerdictOut(
        ok=verdict.ok,
        entries=verdict.entries,
        broken_seq=verdict.broken_seq,
        problem=verdict.problem,
    )
