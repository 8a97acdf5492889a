"""Removing a server (kind `destructive`)."""

from __future__ import annotations

from typing import Any

from serverflow.controlplane import ControlPlane
from serverflow.errors import InvalidInput, NotFound
from serverflow.models import App, AppServer, Server
from serverflow.operations.operation import Actor, Outcome, Proposal, find_server
from serverflow.tenancy import scoped


class DeleteServer:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        ref = args.get("server")
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("name the server to delete", code="VAL001")
        async with scoped(actor.org_id):
            server = await find_server(ref)
            placements = await AppServer.filter(server_id=server.id)
            apps = await App.filter(id__in=[p.app_id for p in placements]).order_by("name")
        return Proposal(
            kind="destructive",
            summary=f"Delete server {server.name}"
            + (f" (apps placed on it: {', '.join(a.name for a in apps)})" if apps else ""),
            preview={
                "action": "delete_server",
                "server": server.name,
                "status": str(server.status),
                "hostname": server.hostname,
                "apps_placed": [a.name for a in apps],
                "effects": [
                    "the server, its command history, metrics and events are deleted",
                    "its agent can no longer connect (its key is forgotten)",
                    "apps placed on it lose this placement; whatever runs on the machine "
                    "itself is not stopped",
                ],
            },
            params={"server_id": str(server.id)},
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        async with scoped(actor.org_id):
            server = await Server.get_or_none(id=params["server_id"])
            if server is None:
                raise NotFound("the server of this plan no longer exists", code="SRV001")
            await server.delete()
        return Outcome(
            True, {"deleted": {"server": server.name, "id": str(server.id)}}, "server deleted"
        )
