"""What a plannable operation is: a dry run that proposes, and an execution that does it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from serverflow.controlplane import ControlPlane
from serverflow.errors import InvalidInput, NotFound
from serverflow.models import App, Role, Server

Kind = Literal["change", "destructive"]
MASK = "********"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Actor:
    """Who runs an operation: the organisation, their role, and the name commands carry."""

    org_id: uuid.UUID
    role: Role
    name: str


@dataclass(frozen=True)
class Proposal:
    """A dry run: what would happen. `params` is the exact call `execute` will receive."""

    kind: Kind
    summary: str
    preview: dict[str, Any]
    params: dict[str, Any]


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    code: str | None = None  # when not ok: the stable code of what went wrong


class Operation(Protocol):
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        """Check everything and describe the change; must not change anything."""
        ...

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        """Make the change the proposal described (checked again: time has passed)."""
        ...


def validated(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, or VAL001 naming the fields (never echoing values: may be secrets)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(arguments)", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
        raise InvalidInput(f"invalid arguments: {summary}", code="VAL001", details=details) from exc


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def find_server(ref: str) -> Server:
    """A server of the scope's organisation, by name or id (inside `scoped`)."""
    sid = as_uuid(ref)
    server = await (Server.get_or_none(id=sid) if sid else Server.get_or_none(name=ref))
    if server is None:
        raise NotFound(
            f"no server {ref!r} in this organisation (list_servers shows them)", code="SRV001"
        )
    return server


async def find_app(ref: str) -> App:
    """An app of the scope's organisation, by name or id (inside `scoped`)."""
    aid = as_uuid(ref)
    app = await (App.get_or_none(id=aid) if aid else App.get_or_none(name=ref))
    if app is None:
        raise NotFound(f"no app {ref!r} in this organisation (list_apps shows them)", code="APP001")
    return app


def masked(env: dict[str, str]) -> dict[str, str]:
    return {key: MASK for key in env}
