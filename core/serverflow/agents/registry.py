"""Which actions a server may run: its agent's inventory filtered by the security mode."""

from __future__ import annotations

from typing import Any

from serverflow.models import SecurityMode, Server

KINDS_ALLOWED: dict[SecurityMode, frozenset[str]] = {
    SecurityMode.FULL: frozenset({"read", "change", "destructive"}),
    SecurityMode.STANDARD: frozenset({"read", "change"}),
    SecurityMode.READ_ONLY: frozenset({"read"}),
}


def inventory_entry(server: Server, action: str) -> dict[str, Any] | None:
    return next((a for a in server.inventory or [] if a.get("name") == action), None)


def allowed_actions(server: Server) -> list[dict[str, Any]]:
    kinds = KINDS_ALLOWED[SecurityMode(server.security_mode)]
    return sorted(
        (a for a in server.inventory or [] if a.get("kind") in kinds), key=lambda a: a["name"]
    )


def registry_body(server: Server, issued_at: int) -> dict[str, Any]:
    return {
        "server_id": str(server.id),
        "version": server.registry_version,
        "issued_at": issued_at,
        "actions": [a["name"] for a in allowed_actions(server)],
    }
