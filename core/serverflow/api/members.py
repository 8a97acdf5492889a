"""Members of the organisation and their roles."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from quart_schema import validate_request, validate_response

from serverflow.accounts import normalize_email
from serverflow.api import bp
from serverflow.api.openapi import answers
from serverflow.api.schemas import ErrorOut, Input, Output, RoleName, parse_id
from serverflow.auth import principal, requires
from serverflow.errors import Conflict, NotFound, PermissionDenied
from serverflow.models import Membership, Role, User


class MemberIn(Input):
    email: str = Field(min_length=3, max_length=254)
    role: RoleName = "member"


class MemberPatch(Input):
    role: RoleName


class MemberOut(Output):
    id: uuid.UUID
    user_id: uuid.UUID
    email: str
    name: str
    role: str
    created_at: datetime


class MemberList(Output):
    members: list[MemberOut]


def _out(m: Membership) -> MemberOut:
    return MemberOut(
        id=m.id,
        user_id=m.user_id,
        email=m.user.email,
        name=m.user.name,
        role=m.role,
        created_at=m.created_at,
    )


async def get_member(member_id: str) -> Membership:
    member = await Membership.get_or_none(
        id=parse_id(member_id, "MEM001", "member")
    ).prefetch_related("user")
    if member is None:
        raise NotFound(f"member {member_id} not found", code="MEM001")
    return member


def _check_can_grant(role: Role) -> None:
    caller = principal()
    if not caller.role.allows(role):
        raise PermissionDenied(f"a {caller.role} cannot grant the {role} role", code="AUTH004")


async def _keep_an_owner(member: Membership, new_role: Role | None) -> None:
    if member.role == Role.OWNER and new_role != Role.OWNER:
        if await Membership.filter(role=Role.OWNER).count() <= 1:
            raise Conflict("the organisation must keep at least one owner", code="MEM002")


@bp.get("/members")
@requires(Role.VIEWER)
@validate_response(MemberList)
async def list_members() -> MemberList:
    members = await Membership.all().prefetch_related("user").order_by("created_at")
    return MemberList(members=[_out(m) for m in members])


@bp.post("/members")
@requires(Role.ADMIN)
@validate_request(MemberIn)
@validate_response(MemberOut, 201)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)  # already a member
async def add_member(data: MemberIn) -> tuple[MemberOut, int]:
    role = Role(data.role)
    _check_can_grant(role)
    user = await User.get_or_none(email=normalize_email(data.email))
    if user is None:
        raise NotFound(f"no user with email {data.email}; create the account first", code="MEM003")
    if await Membership.filter(user_id=user.id).exists():
        raise Conflict(f"{user.email} is already a member", code="MEM004")
    member = await Membership.create(user_id=user.id, role=role)
    await member.fetch_related("user")
    return _out(member), 201


@bp.get("/members/<member_id>")
@requires(Role.VIEWER)
@validate_response(MemberOut)
@validate_response(ErrorOut, 404)
async def read_member(member_id: str) -> MemberOut:
    return _out(await get_member(member_id))


@bp.patch("/members/<member_id>")
@requires(Role.ADMIN)
@validate_request(MemberPatch)
@validate_response(MemberOut)
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)  # the last owner
async def update_member(member_id: str, data: MemberPatch) -> MemberOut:
    member = await get_member(member_id)
    role = Role(data.role)
    _check_can_grant(role)
    _check_can_grant(member.role)
    await _keep_an_owner(member, role)
    member.role = role
    await member.save(update_fields=["role"])
    return _out(member)


@bp.delete("/members/<member_id>")
@requires(Role.ADMIN)
@answers(204, "The member was removed from the organisation.")
@validate_response(ErrorOut, 404)
@validate_response(ErrorOut, 409)  # the last owner
async def remove_member(member_id: str) -> tuple[str, int]:
    member = await get_member(member_id)
    _check_can_grant(member.role)
    await _keep_an_owner(member, None)
    await member.delete()
    return "", 204
