"""Instance operators: the people who manage what every organisation shares (plugins, the
marketplace). A role above organisations, held by a user; granted and withdrawn from the
control plane's own machine (`serverflow operators add|remove`), audited in the instance
chain."""

from __future__ import annotations

from serverflow import audit
from serverflow.accounts import normalize_email
from serverflow.errors import Conflict, NotFound
from serverflow.models import User


async def _user(email: str) -> User:
    user = await User.get_or_none(email=normalize_email(email))
    if user is None:
        raise NotFound(f"no user with email {email}", code="USR002")
    return user


async def list_operators() -> list[User]:
    return await User.filter(is_operator=True).order_by("created_at")


async def add(email: str, by: str) -> User:
    """Make a user an instance operator (idempotent: an operator stays one)."""
    user = await _user(email)
    if not user.is_operator:
        await User.filter(id=user.id).update(is_operator=True)
        user.is_operator = True
        await audit.append(
            audit.INSTANCE,
            audit.Record(by, "operator.added", f"user:{user.email}", {"user_id": str(user.id)}),
        )
    return user


async def remove(email: str, by: str) -> User:
    """Withdraw a user's operator role; the last operator cannot be removed (nobody could
    manage plugins any more until `serverflow operators add` is run on the host)."""
    user = await _user(email)
    if not user.is_operator:
        return user
    if await User.filter(is_operator=True).count() <= 1:
        raise Conflict(
            f"{user.email} is the last instance operator; add another one first",
            code="OPR001",
        )
    await User.filter(id=user.id).update(is_operator=False)
    user.is_operator = False
    await audit.append(
        audit.INSTANCE,
        audit.Record(by, "operator.removed", f"user:{user.email}", {"user_id": str(user.id)}),
    )
    return user
