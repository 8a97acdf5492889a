"""The audit log: read it page by page and check its hash chain; the organisation's, and
the instance's (instance operators only)."""

from __future__ import annotations

import uuid
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
    before: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="Entries older than this seq."
    )
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
    return await _page(query_args)


async def _page(q: AuditQuery, chain: uuid.UUID | None = None) -> AuditPage:
    rows = await audit.page(q.before, q.limit, q.actor, q.action, chain=chain)
    entries = [AuditEntryOut.model_validate(row, from_attributes=True) for row in rows]
    more = len(rows) == q.limit and rows[-1].seq > 1
    return AuditPage(entries=entries, next_before=rows[-1].seq if more else None)


def _verdict(verdict: audit.Verdict) -> AuditVerdictOut:
    return AuditVerdictOut(
        ok=verdict.ok,
        entries=verdict.entries,
        broken_seq=verdict.broken_seq,
        problem=verdict.problem,
    )


@bp.get("/audit/verify")
@requires(Role.VIEWER)
@validate_response(AuditVerdictOut)
@validate_response(ErrorOut, 403)
async def verify_audit() -> AuditVerdictOut:
    """Check the whole hash chain (as `serverflow audit verify` does)."""
    return _verdict(await audit.verify(principal().org_id))


@bp.get("/instance/audit")
@requires(Role.VIEWER, atomic=False, operator=True)
@validate_querystring(AuditQuery)
@validate_response(AuditPage)
@validate_response(ErrorOut, 403)
async def list_instance_audit(query_args: AuditQuery) -> AuditPage:
    """The instance's chain, newest first: what operators did to the instance, and security
    refusals no organisation can be named for. Instance operators only."""
    return await _page(query_args, chain=audit.INSTANCE)


@bp.get("/instance/audit/verify")
@requires(Role.VIEWER, atomic=False, operator=True)
@validate_response(AuditVerdictOut)
@validate_response(ErrorOut, 403)
async def verify_instance_audit() -> AuditVerdictOut:
    """Check the instance's hash chain. Instance operators only."""
    return _verdict(await audit.verify(audit.INSTANCE))
