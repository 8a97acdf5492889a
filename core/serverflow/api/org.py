"""The caller and their organisation."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field
from quart_schema import validate_request, validate_response

from serverflow.accounts import set_password
from serverflow.api import bp
from serverflow.api.openapi import answers
from serverflow.api.schemas import Input, Output
from serverflow.auth import check_password, principal, requires
from serverflow.errors import AuthenticationRequired, PermissionDenied
from serverflow.models import Organization, Role, User


class OrgOut(Output):
    id: uuid.UUID
    name: str
    slug: str


class MeOut(Output):
    kind: Literal["session", "token"]
    label: str
    role: str
    user_id: uuid.UUID | None
    operator: bool = Field(description="Whether the caller is an instance operator.")
    organization: OrgOut


class OrgPatch(Input):
    name: str = Field(min_length=1, max_length=100)


@bp.get("/me")
@requires(Role.VIEWER)
@validate_response(MeOut)
async def me() -> MeOut:
    caller = principal()
    org = await Organization.get(id=caller.org_id)
    return MeOut(
        kind=caller.kind,
        label=caller.label,
        role=caller.role,
        user_id=caller.user_id,
        operator=caller.operator,
        organization=OrgOut.model_validate(org),
    )


class PasswordIn(Input):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


@bp.post("/me/password")
# Not atomic: a wrong current password must stay counted (sign-in throttling), not be
# rolled back with the refused request. Users and sessions are not tenant-scoped.
@requires(Role.VIEWER, atomic=False)
@validate_request(PasswordIn)
@answers(204, "The password was changed; every session of the user was signed out.")
async def change_password(data: PasswordIn) -> tuple[str, int]:
    """Change the signed-in user's password; every session of theirs is signed out."""
    caller = principal()
    if caller.kind != "session" or caller.user_id is None:
        raise PermissionDenied("Only a signed-in user can change their password.")
    user = await User.get(id=caller.user_id)
    if not await check_password(user.email, user.password_hash, data.current_password):
        raise AuthenticationRequired("The current password is wrong.", code="AUTH003")
    await set_password(user, data.new_password)
    return "", 204


@bp.get("/organization")
@requires(Role.VIEWER)
@validate_response(OrgOut)
async def read_org() -> OrgOut:
    return OrgOut.model_validate(await Organization.get(id=principal().org_id))


@bp.patch("/organization")
@requires(Role.OWNER)
@validate_request(OrgPatch)
@validate_response(OrgOut)
async def update_org(data: OrgPatch) -> OrgOut:
    org = await Organization.get(id=principal().org_id)
    org.name = data.name
    await org.save(update_fields=["name"])
    return OrgOut.model_validate(org)
