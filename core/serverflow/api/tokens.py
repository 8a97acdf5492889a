"""API tokens of the organisation: created (value shown once), listed, revoked."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import Field
from quart_schema import validate_request, validate_response

from serverflow import audit
from serverflow.accounts import issue_token
from serverflow.api import bp
from serverflow.api.schemas import ErrorOut, Input, Output, RoleName, parse_id
from serverflow.auth import actor, principal, requires
from serverflow.errors import NotFound, PermissionDenied
from serverflow.models import ApiToken, Role, User


class TokenIn(Input):
    name: str = Field(min_length=1, max_length=100)
    role: RoleName = "member"
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    allow_apply: bool = Field(
        default=False, description="MCP: let an assistant apply the changes it planned."
    )
    operator: bool = Field(
        default=False,
        description="Also act as an instance operator (only an operator can ask for this; "
        "the token loses it when its creator stops being one).",
    )


class TokenOut(Output):
    id: uuid.UUID
    name: str
    role: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    allow_apply: bool
    operator: bool


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret; shown only in this response.")


class TokenList(Output):
    tokens: list[TokenOut]


async def get_token(token_id: str) -> ApiToken:
    token = await ApiToken.get_or_none(id=parse_id(token_id, "TOK001", "token"))
    if token is None:
        raise NotFound(f"token {token_id} not found", code="TOK001")
    return token


@bp.get("/tokens")
@requires(Role.ADMIN)
@validate_response(TokenList)
async def list_tokens() -> TokenList:
    tokens = await ApiToken.all().order_by("-created_at")
    return TokenList(tokens=[TokenOut.model_validate(t) for t in tokens])


@bp.post("/tokens")
@requires(Role.ADMIN)
@validate_request(TokenIn)
@validate_response(NewTokenOut, 201)
@validate_response(ErrorOut, 403)
async def create_token(data: TokenIn) -> tuple[NewTokenOut, int]:
    caller = principal()
    if data.operator and not caller.operator:
        raise PermissionDenied(
            "Only an instance operator can create a token that acts as one.", code="TOK003"
        )
    creator = await User.get_or_none(id=caller.user_id) if caller.user_id else None
    issued = await issue_token(
        caller.org_id,
        data.name,
        Role(data.role),
        created_by=creator,
        creator_role=caller.role,
        expires_in_days=data.expires_in_days,
        allow_apply=data.allow_apply,
        operator=data.operator,
    )
    out = NewTokenOut.model_validate(
        {**TokenOut.model_validate(issued.token).model_dump(), "token": issued.value}
    )
    return out, 201


@bp.get("/tokens/<token_id>")
@requires(Role.ADMIN)
@validate_response(TokenOut)
@validate_response(ErrorOut, 404)
async def read_token(token_id: str) -> TokenOut:
    return TokenOut.model_validate(await get_token(token_id))


@bp.delete("/tokens/<token_id>")
@requires(Role.ADMIN)
@validate_response(TokenOut)
@validate_response(ErrorOut, 404)
async def revoke_token(token_id: str) -> TokenOut:
    token = await get_token(token_id)
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
        await token.save(update_fields=["revoked_at"])
        # The request's own entry only has the path; this one says which token it was.
        caller = principal()
        await audit.append(
            caller.org_id,
            audit.Record(
                actor=actor(caller),
                action="token.revoked",
                target=f"token:{token.id}",
                details={
                    "token_id": str(token.id),
                    "token_name": token.name,
                    "role": str(token.role),
                },
            ),
        )
    return TokenOut.model_validate(token)
