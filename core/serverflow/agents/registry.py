"""Which actions a server may run: its agent's inventory filtered by the security mode."""

from __future__ import annotations

import logging
from typing import Any

from serverflow.errors import InvalidInput, NotFound, PermissionDenied
from serverflow.models import Role, SecurityMode, Server
from serverflow_contract.schema import SchemaError, UnsupportedSchema, validate

log = logging.getLogger(__name__)

KINDS_ALLOWED: dict[SecurityMode, frozenset[str]] = {
    SecurityMode.FULL: frozenset({"read", "change", "destructive"}),
    SecurityMode.STANDARD: frozenset({"read", "change"}),
    SecurityMode.READ_ONLY: frozenset({"read"}),
}


# Who may run (or apply, or confirm) a command of each kind: REST API, MCP and plans alike.
ROLE_FOR_KIND: dict[str, Role] = {
    "read": Role.VIEWER,
    "change": Role.MEMBER,
    "destructive": Role.ADMIN,
}


def inventory_entry(server: Server, action: str) -> dict[str, Any] | None:
    return next((a for a in server.inventory or [] if a.get("name") == action), None)


def allowed_actions(server: Server) -> list[dict[str, Any]]:
    kinds = KINDS_ALLOWED[SecurityMode(server.security_mode)]
    return sorted(
        (a for a in server.inventory or [] if a.get("kind") in kinds), key=lambda a: a["name"]
    )


def may_run(server: Server, action: str) -> bool:
    spec = inventory_entry(server, action)
    return spec is not None and spec["kind"] in KINDS_ALLOWED[SecurityMode(server.security_mode)]


def check_action(
    server: Server, action: str, params: dict[str, Any], role: Role | None = None
) -> dict[str, Any]:
    """The action's registry entry, if `server` may run it with `params` (and, given a
    `role`, if that role may run its kind); else the error saying why."""
    spec = inventory_entry(server, action)
    if spec is None:
        raise NotFound(
            f"the agent of {server.name} has no action {action!r} (list its actions to see them)",
            code="ACT001",
        )
    if spec["kind"] not in KINDS_ALLOWED[SecurityMode(server.security_mode)]:
        raise PermissionDenied(
            f"{server.name} is in {server.security_mode} mode: "
            f"{spec['kind']} actions are not allowed",
            code="ACT002",
        )
    needed = ROLE_FOR_KIND[spec["kind"]]
    if role is not None and not role.allows(needed):
        raise PermissionDenied(f"{spec['kind']} actions need the {needed} role", code="AUTH004")
    try:
        validate(params, spec["params_schema"])
    except UnsupportedSchema as exc:
        # An agent of another version may describe an action with a schema this side's
        # guard refuses (an older agent's unanchored pattern): the agent checks the
        # parameters of its own actions anyway, so leave the decision to it.
        log.warning("not checking params of %s on %s here: %s", action, server.name, exc)
    except SchemaError as exc:
        raise InvalidInput(
            f"invalid params for {action} on {server.name}: {exc}",
            code="ACT003",
            details=[{"field": exc.path, "problem": exc.problem}],
        ) from exc
    return spec


def registry_body(server: Server, issued_at: int) -> dict[str, Any]:
    return {
        "server_id": str(server.id),
        "version": server.registry_version,
        "issued_at": issued_at,
        "actions": [a["name"] for a in allowed_actions(server)],
    }
