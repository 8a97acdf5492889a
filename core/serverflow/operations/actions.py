"""Agent actions from a server's signed registry: checked, run, or planned (change and
destructive kinds)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from serverflow.agents.registry import ROLE_FOR_KIND, check_action
from serverflow.controlplane import ControlPlane
from serverflow.errors import InvalidInput, NotFound, PermissionDenied
from serverflow.models import Command, CommandStatus, Server
from serverflow.operations.operation import (
    Actor,
    Outcome,
    Proposal,
    find_server,
    validated,
)
from serverflow.schemas import Input
from serverflow.tenancy import scoped


class RunArgs(Input):
    server: str = Field(min_length=1, max_length=100)
    action: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


async def run_checked(
    cp: ControlPlane,
    actor: Actor,
    server_id: str,
    action: str,
    kind: str,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Send one signed command planned earlier, after checking it is still allowed."""
    async with scoped(actor.org_id):
        server = await Server.get_or_none(id=server_id)
    if server is None:
        raise NotFound("the server of this plan no longer exists", code="SRV001")
    spec = check_action(server, action, params)
    if spec["kind"] != kind:
        raise PermissionDenied(
            f"{action} on {server.name} is now a {spec['kind']} action, planned as {kind}; "
            "ask for a new dry run",
            code="ACT002",
        )
    if not actor.role.allows(ROLE_FOR_KIND[kind]):
        raise PermissionDenied(
            f"{kind} actions need the {ROLE_FOR_KIND[kind]} role", code="AUTH004"
        )
    command = await cp.hub.run(
        actor.org_id, server, action, kind, params, actor.name, float(spec["timeout"]) + 15
    )
    return command_view(command, server.name)


def command_view(command: Command, server: str) -> dict[str, Any]:
    return {
        "command_id": str(command.id),
        "server": server,
        "action": command.action,
        "kind": command.kind,
        "status": str(command.status),
        "code": command.code,
        "message": command.message,
        "output": command.output,
    }


async def spec_for(actor: Actor, args: dict[str, Any]) -> tuple[RunArgs, Server, dict[str, Any]]:
    """The server, and the registry entry of the action it would run, all checked."""
    data = validated(RunArgs, args)
    async with scoped(actor.org_id):
        server = await find_server(data.server)
    return data, server, check_action(server, data.action, data.params)


async def run_read(cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> dict[str, Any]:
    """Run a read action at once and answer with its signed result."""
    data, server, spec = await spec_for(actor, args)
    command = await cp.hub.run(
        actor.org_id,
        server,
        data.action,
        spec["kind"],
        data.params,
        actor.name,
        float(spec["timeout"]) + 15,
    )
    return command_view(command, server.name)


class RunAction:
    async def propose(self, cp: ControlPlane, actor: Actor, args: dict[str, Any]) -> Proposal:
        data, server, spec = await spec_for(actor, args)
        kind = spec["kind"]
        if kind not in ("change", "destructive"):
            raise InvalidInput(f"{data.action} is a {kind} action: it runs without a plan")
        warnings = [] if cp.hub.connected(server) else [f"{server.name} is not connected"]
        return Proposal(
            kind=kind,
            summary=f"Run {data.action} ({kind}) on {server.name}",
            preview={
                "action": "run_action",
                "server": server.name,
                "connected": cp.hub.connected(server),
                "registry_entry": {
                    "name": spec["name"],
                    "kind": kind,
                    "description": spec.get("description", ""),
                    "timeout_s": spec.get("timeout"),
                },
                "commands": [
                    {
                        "server": server.name,
                        "action": data.action,
                        "kind": kind,
                        "params": data.params,
                    }
                ],
                "warnings": warnings,
            },
            params={
                "server_id": str(server.id),
                "action": data.action,
                "kind": kind,
                "params": data.params,
            },
        )

    async def execute(self, cp: ControlPlane, actor: Actor, params: dict[str, Any]) -> Outcome:
        result = await run_checked(
            cp, actor, params["server_id"], params["action"], params["kind"], params["params"]
        )
        ok = result["status"] == CommandStatus.OK
        return Outcome(
            ok,
            {"command": result},
            "done" if ok else f"{result['action']} ended {result['status']}: {result['message']}",
            None if ok else "MCP002",
        )
