"""Plans: changes an assistant proposed over MCP, shown as a dry run before anything happens.

A *change* plan runs when the assistant applies it (its token must have `allow_apply`) or
when a person confirms it; a *destructive* plan runs only when a person confirms it. Either
way a plan runs at most once (the claim is one conditional UPDATE, so a replay or a race
finds nothing to claim) and never after it expired. The operations themselves (what a
plan previews and how it runs) live in `serverflow.operations`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from serverflow import audit
from serverflow.agents.registry import ROLE_FOR_KIND
from serverflow.auth import Principal, actor
from serverflow.controlplane import ControlPlane
from serverflow.errors import Conflict, NotFound, PermissionDenied, ServerFlowError
from serverflow.models import ApiToken, Organization, Plan, PlanStatus, Role
from serverflow.operations.operation import Actor, Outcome
from serverflow.operations.registry import OPERATIONS
from serverflow.tenancy import scoped

log = logging.getLogger(__name__)

_running: set[asyncio.Task[Any]] = set()  # plans being applied (kept referenced until done)

# A plan still "confirmed" this long after it was claimed is not running any more: the
# control plane that ran it stopped. Longer than any operation may take (a deploy waits
# for its agent at most 30 minutes).
ABANDONED_AFTER = timedelta(hours=2)


def _require(principal: Principal, role: Role, what: str) -> None:
    if not principal.can(role):
        raise PermissionDenied(
            f"{what} needs the {role} role; you are {principal.role}.", code="AUTH004"
        )


def parse_plan_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"plan {value!r} not found", code="PLAN001") from None


async def expire(org_id: uuid.UUID) -> int:
    """Mark the organisation's pending plans whose time ran out as expired."""
    async with scoped(org_id):
        count: int = await Plan.filter(
            status=PlanStatus.PENDING, expires_at__lte=datetime.now(UTC)
        ).update(status=PlanStatus.EXPIRED)
    return count


async def abandon_stale(org_id: uuid.UUID, now: datetime | None = None) -> int:
    """End the plans that were claimed but never finished (their control plane stopped
    while running them) as failed, so nobody waits on them and they cannot run again."""
    cutoff = (now or datetime.now(UTC)) - ABANDONED_AFTER
    message = (
        "the control plane stopped while running this plan; check what it did "
        "(the audit log and the app's deployments) before asking for it again"
    )
    async with scoped(org_id):
        count: int = await Plan.filter(status=PlanStatus.CONFIRMED, decided_at__lte=cutoff).update(
            status=PlanStatus.FAILED,
            result={"error": {"code": "PLAN006", "message": message}},
        )
    if count:
        log.warning("%d plan(s) of organisation %s abandoned mid-run: marked failed", count, org_id)
    return count


async def sweep_loop(every_s: float = 600) -> None:
    """Expire overdue plans and fail abandoned ones, in every organisation, now and then."""
    while True:
        try:
            for org in await Organization.all():
                await expire(org.id)
                await abandon_stale(org.id)
        except Exception:
            log.exception("plan sweep failed")
        await asyncio.sleep(every_s)


async def get(org_id: uuid.UUID, plan_id: str) -> Plan:
    """One plan of the organisation (expired ones say so); another's is simply not found."""
    pid = parse_plan_id(plan_id)
    await expire(org_id)
    async with scoped(org_id):
        plan = await Plan.get_or_none(id=pid)
    if plan is None:
        raise NotFound(f"plan {plan_id} not found", code="PLAN001")
    return plan


async def listing(org_id: uuid.UUID, status: str | None = None, limit: int = 50) -> list[Plan]:
    await expire(org_id)
    async with scoped(org_id):
        query = Plan.all().order_by("-created_at").limit(limit)
        if status is not None:
            query = query.filter(status=PlanStatus(status))
        return list(await query)


def view(plan: Plan) -> dict[str, Any]:
    """What the API, the CLI and the assistant see of a plan (never its stored parameters)."""
    return {
        "id": str(plan.id),
        "kind": plan.kind,
        "tool": plan.tool,
        "summary": plan.summary,
        "status": str(plan.status),
        "created_by": plan.created_by,
        "created_at": plan.created_at.astimezone(UTC).isoformat(),
        "expires_at": plan.expires_at.astimezone(UTC).isoformat(),
        "decided_by": plan.decided_by,
        "decided_at": plan.decided_at.astimezone(UTC).isoformat() if plan.decided_at else None,
        "preview": plan.preview,
        "result": plan.result,
    }


async def propose(cp: ControlPlane, principal: Principal, tool: str, args: dict[str, Any]) -> Plan:
    """Dry-run `tool` and store the plan; nothing changes anywhere else."""
    operation = OPERATIONS[tool]
    # Every plannable operation changes something: a viewer is refused before any work.
    _require(principal, Role.MEMBER, tool)
    who = Actor(principal.org_id, principal.role, actor(principal))
    proposal = await operation.propose(cp, who, args)
    _require(principal, ROLE_FOR_KIND[proposal.kind], f"a {proposal.kind} {tool}")
    expires = datetime.now(UTC) + timedelta(seconds=cp.settings.plan_expiry_seconds)
    async with scoped(principal.org_id):
        return await Plan.create(
            kind=proposal.kind,
            tool=tool,
            summary=proposal.summary[:2000],
            params_encrypted=cp.keys.cipher.encrypt(json.dumps(proposal.params)),
            preview=audit.redact(proposal.preview),
            created_by=actor(principal),
            token_id=principal.token_id,
            expires_at=expires,
        )


async def apply(cp: ControlPlane, principal: Principal, plan_id: str) -> tuple[Plan, Outcome]:
    """The assistant applies a change plan: only with `allow_apply`, only once, in time."""
    plan = await get(principal.org_id, plan_id)
    if plan.kind == "destructive":
        raise PermissionDenied(
            f"plan {plan.id} is destructive: an assistant never applies it. A person must "
            f"confirm it in the dashboard or with `serverflow plans confirm {plan.id}`; "
            "poll it with get_plan.",
            code="PLAN005",
        )
    _require(principal, ROLE_FOR_KIND[plan.kind], f"applying a {plan.kind} plan")
    async with scoped(principal.org_id):
        token = await ApiToken.get_or_none(id=principal.token_id) if principal.token_id else None
    if token is None or not token.allow_apply:
        raise PermissionDenied(
            "this token may not apply plans (allow_apply is off). Ask a person to apply it "
            f"with `serverflow plans confirm {plan.id}` (or the dashboard), or to create a "
            "token for the assistant with `serverflow tokens create --allow-apply`.",
            code="PLAN004",
        )
    return await _run(cp, principal, plan)


async def confirm(cp: ControlPlane, principal: Principal, plan_id: str) -> tuple[Plan, Outcome]:
    """A person approves a plan (change or destructive): it runs at once."""
    plan = await get(principal.org_id, plan_id)
    _require(principal, ROLE_FOR_KIND[plan.kind], f"confirming a {plan.kind} plan")
    return await _run(cp, principal, plan)


async def reject(principal: Principal, plan_id: str) -> Plan:
    plan = await get(principal.org_id, plan_id)
    now = datetime.now(UTC)
    await _claim(principal.org_id, plan, PlanStatus.REJECTED, actor(principal), now)
    async with scoped(principal.org_id):
        return await Plan.get(id=plan.id)


async def _claim(
    org_id: uuid.UUID, plan: Plan, status: PlanStatus, decided_by: str, now: datetime
) -> None:
    """Move a pending plan to `status`; exactly one caller ever succeeds."""
    async with scoped(org_id):
        claimed = await Plan.filter(
            id=plan.id, status=PlanStatus.PENDING, expires_at__gt=now
        ).update(status=status, decided_by=decided_by[:300], decided_at=now)
        if claimed:
            return
        fresh = await Plan.get(id=plan.id)
    if fresh.status == PlanStatus.PENDING or fresh.status == PlanStatus.EXPIRED:
        await expire(org_id)
        raise Conflict(
            f"plan {plan.id} expired at {fresh.expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} "
            "UTC; nothing was changed. Ask for a new dry run.",
            code="PLAN002",
        )
    raise Conflict(
        f"plan {plan.id} is already {fresh.status}"
        + (f" (by {fresh.decided_by})" if fresh.decided_by else "")
        + "; a plan runs at most once and nothing was run again.",
        code="PLAN003",
    )


async def _run(cp: ControlPlane, principal: Principal, plan: Plan) -> tuple[Plan, Outcome]:
    who = actor(principal)
    await _claim(principal.org_id, plan, PlanStatus.CONFIRMED, who, datetime.now(UTC))
    # Claimed: from here the plan must end applied or failed even if the caller goes away
    # (an MCP client that hangs up cancels its request), so it runs in a task of its own.
    task = asyncio.create_task(_execute(cp, Actor(principal.org_id, principal.role, who), plan))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)


async def _execute(cp: ControlPlane, runner: Actor, plan: Plan) -> tuple[Plan, Outcome]:
    try:
        params = json.loads(cp.keys.cipher.decrypt(plan.params_encrypted))
        outcome = await OPERATIONS[plan.tool].execute(cp, runner, params)
    except ServerFlowError as exc:
        error = {"code": exc.code, "message": exc.message}
        outcome = Outcome(False, {"error": error}, exc.message, exc.code)
    except Exception as exc:
        log.exception("plan %s (%s) crashed", plan.id, plan.tool)
        error = {"code": "INT001", "message": f"internal error: {type(exc).__name__}"}
        outcome = Outcome(False, {"error": error}, error["message"], "INT001")
    status = PlanStatus.APPLIED if outcome.ok else PlanStatus.FAILED
    async with scoped(runner.org_id):
        await Plan.filter(id=plan.id).update(status=status, result=audit.redact(outcome.result))
        return await Plan.get(id=plan.id), outcome
