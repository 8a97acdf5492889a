"""Plans an assistant proposed over MCP: listed, shown, confirmed or rejected by a person.

Confirming runs the plan at once (change or destructive) and answers with how it ended.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from quart_schema import validate_querystring, validate_response

from serverflow import plans
from serverflow.api import bp
from serverflow.api.schemas import ErrorOut
from serverflow.auth import principal, requires
from serverflow.controlplane import current
from serverflow.models import Role

StatusName = Literal["pending", "confirmed", "applied", "failed", "rejected", "expired"]


class PlanOut(BaseModel):
    id: uuid.UUID
    kind: str = Field(description="change, or destructive (only a person can confirm it)")
    tool: str
    summary: str
    status: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    preview: dict[str, Any] = Field(description="What the plan does (secrets masked).")
    result: dict[str, Any] | None = Field(description="How it ended, once it ran.")


class PlanList(BaseModel):
    plans: list[PlanOut]


class PlanQuery(BaseModel):
    status: StatusName | None = None
    limit: int = Field(default=50, ge=1, le=500)


def _out(plan: Any) -> PlanOut:
    return PlanOut.model_validate(plans.view(plan))


@bp.get("/plans")
@requires(Role.VIEWER)
@validate_querystring(PlanQuery)
@validate_response(PlanList)
async def list_plans(query_args: PlanQuery) -> PlanList:
    """The organisation's plans, newest first."""
    rows = await plans.listing(principal().org_id, query_args.status, query_args.limit)
    return PlanList(plans=[_out(p) for p in rows])


@bp.get("/plans/<plan_id>")
@requires(Role.VIEWER)
@validate_response(PlanOut)
@validate_response(ErrorOut, 404)
async def read_plan(plan_id: str) -> PlanOut:
    return _out(await plans.get(principal().org_id, plan_id))


@bp.post("/plans/<plan_id>/confirm")
@requires(Role.ADMIN, atomic=False)
@validate_response(PlanOut)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)
async def confirm_plan(plan_id: str) -> PlanOut:
    """Approve a pending plan: it runs now, once. The answer says whether it applied or failed."""
    plan, _ = await plans.confirm(current(), principal(), plan_id)
    return _out(plan)


@bp.post("/plans/<plan_id>/reject")
@requires(Role.ADMIN, atomic=False)
@validate_response(PlanOut)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)
async def reject_plan(plan_id: str) -> PlanOut:
    """Refuse a pending plan: it will never run."""
    return _out(await plans.reject(principal(), plan_id))
