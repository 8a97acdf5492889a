"""The SDK's MCP server, with one boundary around every tool call: the caller's rate limit,
the Quart app context, stable error codes, and an audit entry however the call ends."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent
from pydantic import ValidationError
from quart import Quart

from serverflow import __version__, audit
from serverflow.controlplane import ControlPlane
from serverflow.errors import NotFound, ServerFlowError, TooManyRequests
from serverflow.http_errors import error_code
from serverflow.mcp.caller import caller
from serverflow.mcp.resources import register_resources
from serverflow.mcp.tools import TOOLS

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = """\
ServerFlow runs the user's apps on their own Linux servers; you act for the user with their
API token, inside their organisation and role.
- Read tools (list_servers, get_server, list_apps, get_app, get_app_logs, get_app_output,
  list_actions, get_plan, list_plans, and run_action with a read action) answer at once.
- Tools that change something (create_app, update_app, deploy_app, rollback_app,
  restart_app, run_action with a change action) only make a DRY RUN: nothing changes; they
  return what would happen and a plan_id. Show the user the summary. apply_plan(plan_id)
  makes the change if the token allows assistants to apply plans; otherwise a person
  confirms it (`serverflow plans confirm ID`). Plans expire and run at most once.
- Destructive tools (delete_app, delete_server, destructive actions) are never applied by
  you: a person confirms the plan; poll get_plan to see it run.
- Errors carry a stable code (e.g. APP001: no such app; PLAN004: this token may not apply).
Every call you make is recorded in the organisation's audit log.
"""


def error_result(code: str, message: str, details: Any = None) -> CallToolResult:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return CallToolResult(
        content=[TextContent(type="text", text=f"{code}: {message}")],
        structured_content={"error": error},
        is_error=True,
    )


def _target(arguments: dict[str, Any]) -> str:
    parts = [
        f"{key}:{arguments[key]}"
        for key in ("server", "app", "name", "action", "plan_id")
        if isinstance(arguments.get(key), str)
    ]
    return " ".join(parts)


def _validation_failure(tool: str, exc: ValidationError) -> CallToolResult:
    # Field names and problems only: the values may be secrets (env, params).
    details = [
        {"field": ".".join(str(p) for p in e["loc"]) or "(arguments)", "problem": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
    return error_result("VAL001", f"invalid arguments for {tool}: {summary}", details)


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Finish `coro` even if the caller is cancelled (its client went away)."""
    return await asyncio.shield(asyncio.ensure_future(coro))


class ServerFlowMCP(MCPServer[Any]):
    def __init__(self, quart: Quart, cp: ControlPlane) -> None:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        super().__init__(
            "serverflow", title="ServerFlow", version=__version__, instructions=INSTRUCTIONS
        )
        # MCPServer calls logging.basicConfig; ServerFlow configures logging itself.
        root.handlers[:], root.level = handlers, level
        self.quart = quart
        self.cp = cp
        self.tool_names: set[str] = set()
        for fn, hints in TOOLS:
            self.add_tool(fn, annotations=hints, structured_output=True)
            self.tool_names.add(fn.__name__)
        register_resources(self)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        principal = caller()
        outcome = "INT001"  # until the call ends otherwise
        extra: dict[str, Any] = {}
        try:
            result = await self._call(name, arguments, context)
            outcome, extra = self._summary(result)
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if outcome == "RATE001":  # a flood of refused calls: counted per minute
                await shielded(
                    self.cp.refusals.note(
                        principal.org_id,
                        f"mcp.{name}",
                        outcome,
                        actor=principal.label,
                        source="mcp",
                        target=_target(arguments),
                    )
                )
            else:
                record = audit.Record(
                    actor=principal.label,
                    action=f"mcp.{name}",
                    target=_target(arguments),
                    details={"arguments": arguments, **extra},
                    outcome=outcome,
                )
                await shielded(audit.append(principal.org_id, record))

    async def _call(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None
    ) -> CallToolResult | InputRequiredResult:
        if name not in self.tool_names:
            return error_result("MCP001", f"there is no tool {name!r}; list the tools to see them")
        try:
            await self.cp.mcp_limit.check(f"token:{caller().token_id}", "MCP")
            async with self.quart.app_context():
                return await super().call_tool(name, arguments, context)
        except TooManyRequests as exc:  # the rate limit: a tool result, not an HTTP 429
            return error_result(exc.code, exc.message, {"retry_after": exc.retry_after})
        except ServerFlowError as exc:
            return error_result(exc.code, exc.message)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ServerFlowError):
                return error_result(cause.code, cause.message, cause.details)
            if isinstance(cause, ValidationError):
                return _validation_failure(name, cause)
            ref = secrets.token_hex(6)
            log.error("MCP tool %s failed (ref %s)", name, ref, exc_info=cause or exc)
            code = error_code(cause) if cause else "INT001"
            what = "a backing service is unreachable" if code == "DB001" else "internal error"
            return error_result(code, f"{what}; the control plane's log has details (ref {ref})")

    @staticmethod
    def _summary(result: CallToolResult | InputRequiredResult) -> tuple[str, dict[str, Any]]:
        """The audit outcome of a tool result, and what else the entry should say."""
        if not isinstance(result, CallToolResult):
            return "ok", {}
        content = result.structured_content if isinstance(result.structured_content, dict) else {}
        if result.is_error:
            error = content.get("error") or {}
            return str(error.get("code") or "INT001"), {"error": error.get("message")}
        if content.get("dry_run"):
            return "planned", {"plan_id": content.get("plan_id"), "kind": content.get("kind")}
        return "ok", {}

    async def guarded(self, read: Callable[[], Awaitable[T]]) -> T:
        """Run a resource read for the caller: rate limited, app context, resource errors."""
        try:
            await self.cp.mcp_limit.check(f"token:{caller().token_id}", "MCP")
            async with self.quart.app_context():
                return await read()
        except NotFound as exc:
            raise ResourceNotFoundError(f"{exc.code}: {exc.message}") from exc
        except ServerFlowError as exc:
            raise ResourceError(f"{exc.code}: {exc.message}") from exc
