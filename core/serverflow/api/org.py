"""The caller and their organisation."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field
from quart_schema import validate_request, validate_response

from serverflow.api import bp
from serverflow.api.schemas import Input, Output
from serverflow.auth import principal, requires
from serverflow.models import Organization, Role


class OrgOut(Output):
    id: uuid.UUID
    name: str
    slug: str


class MeOut(Output):
    kind: Literal["session", "token"]
    label: str
    role: str
    user_id: uuid.UUID | None
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
        organization=OrgOut.model_validate(org),
    )


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
