"""The error hierarchy: each error has a stable code, an HTTP status and an actionable message.

Codes are part of the public API: never reuse or renumber one. docs/errors.md lists them.
"""

from __future__ import annotations

import math
from typing import Any


class ServerFlowError(Exception):
    code = "INT001"
    status = 500
    default_message = "Internal error."

    def __init__(self, message: str | None = None, *, code: str | None = None, details: Any = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        if code:
            self.code = code
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class ConfigError(ServerFlowError):
    code = "CFG001"
    default_message = "Invalid configuration."


class DatabaseError(ServerFlowError):
    code = "DB001"
    status = 503
    default_message = "The database is unreachable."


class InvalidInput(ServerFlowError):
    code = "VAL001"
    status = 400
    default_message = "The request is invalid."


class BodyTooLarge(ServerFlowError):
    code = "VAL003"
    status = 413
    default_message = "The request body is larger than the configured limit."


class UnsupportedMediaType(ServerFlowError):
    code = "VAL005"
    status = 415
    default_message = "The request body's Content-Type is not accepted here."


class NotFound(ServerFlowError):
    code = "GEN404"
    status = 404
    default_message = "Not found."


class Conflict(ServerFlowError):
    code = "GEN409"
    status = 409
    default_message = "This conflicts with something that already exists."


class AuthenticationRequired(ServerFlowError):
    code = "AUTH001"
    status = 401
    default_message = "Sign in or send an API token (Authorization: Bearer ...)."


class PermissionDenied(ServerFlowError):
    code = "AUTH004"
    status = 403
    default_message = "Your role does not allow this."


class TooManyRequests(ServerFlowError):
    """A 429: always answered with `Retry-After: <retry_after>` (whole seconds, at least 1)."""

    code = "AUTH005"
    status = 429
    default_message = "Too many attempts; wait and try again."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        retry_after: float = 1,
        details: Any = None,
    ):
        super().__init__(message, code=code, details=details)
        self.retry_after = max(1, math.ceil(retry_after))


class AgentUnavailable(ServerFlowError):
    code = "AGT001"
    status = 409
    default_message = "The server's agent is not connected."


class LogsUnavailable(ServerFlowError):
    """The agent answered `app.logs` with a failure (or not in time); the message says why."""

    code = "LOG001"
    status = 502
    default_message = "The agent could not read the app's logs."


# Every code: HTTP status (or "CLI" for command-line-only errors) and meaning.
# docs/errors.md is generated from this table (scripts/errors_doc.py).
CODES: dict[str, tuple[int | str, str]] = {
    "AUTH001": (401, "Authentication required."),
    "AUTH002": (401, "The API token is malformed, unknown, expired or revoked."),
    "AUTH003": (401, "Wrong email or password."),
    "AUTH004": (403, "Your role does not allow this action."),
    "AUTH005": (429, "Too many failed sign-in attempts; wait before trying again."),
    "AUTH006": (403, "The CSRF token is missing or does not match; reload the page."),
    "AUTH007": (403, "Only an instance operator can do this (plugins, the instance's audit)."),
    "VAL001": (400, "The request body or parameters failed validation."),
    "VAL002": (400, "The request body is not valid JSON or form data, or not UTF-8."),
    "VAL003": (413, "The request body is larger than the configured limit."),
    "VAL004": (400, "The request must be sent as application/json."),
    "VAL005": (415, "The body's Content-Type is not accepted here (forms take form data)."),
    "GEN404": (404, "No such endpoint."),
    "GEN405": (405, "Method not allowed on this endpoint."),
    "SRV001": (404, "Server not found."),
    "SRV002": (409, "A server with this name already exists in the organisation."),
    "TOK001": (404, "API token not found."),
    "TOK002": (403, "A token cannot be given a role higher than its creator's."),
    "TOK003": (403, "Only an instance operator can create a token that acts as one."),
    "OPR001": ("CLI", "The last instance operator cannot be removed; add another one first."),
    "MEM001": (404, "Member not found."),
    "MEM002": (409, "The organisation must keep at least one owner."),
    "MEM003": (404, "No user with this email exists."),
    "MEM004": (409, "This user is already a member."),
    "ORG001": (404, "Organisation not found."),
    "USR001": (409, "A user with this email already exists."),
    "USR002": (404, "User not found."),
    "CFG001": ("CLI", "The configuration is invalid."),
    "CFG002": ("CLI", "A secret file has unsafe permissions."),
    "DB001": (503, "The database is unreachable."),
    "DB002": ("CLI", "The database role is a superuser or bypasses row-level security."),
    "AGT001": (409, "The server's agent is not connected."),
    "AGT002": (
        "command",
        "Agent reconnecting: the control-plane instance holding its connection stopped; "
        "a result the agent reports later is stored with the command.",
    ),
    "MET001": (403, "/metrics answers this machine only, or a caller with the metrics token."),
    "ACT001": (404, "The server's agent has no such action."),
    "ACT002": (403, "The server's security mode does not allow this kind of action."),
    "ACT003": (400, "The action's parameters do not match its schema."),
    "CMD404": (404, "Command not found."),
    "RATE001": (429, "Too many calls for this token or user; wait as Retry-After says."),
    "INS001": (401, "The install token is invalid, expired or already used."),
    "APP001": (404, "App not found."),
    "APP002": (400, "Unknown runtime (no plugin provides it)."),
    "APP003": (409, "The app is not placed on any server."),
    "APP004": (409, "A domain is already used by another app."),
    "APP005": (409, "An app with this name already exists in the organisation."),
    "APP006": (400, "Removing an app from one of its servers is not supported yet."),
    "APP007": (400, "The web and release process types cannot be scaled."),
    "DEP001": (404, "Deployment not found."),
    "DEP002": (404, "No release with this id was ever live."),
    "DEP003": (409, "No earlier release to roll back to."),
    "LOG001": (502, "The agent could not read the app's logs (not running there, or it failed)."),
    "HOOK001": (401, "The webhook signature or token is missing or wrong; nothing deployed."),
    "HOOK002": (400, "The webhook body is not a JSON object."),
    "HOOK404": (404, "No such webhook."),
    "KEY001": ("CLI", "No signing key to rotate, or the rotation failed."),
    "PLG001": (404, "No installed plugin has this name."),
    "PLG002": (404, "The plugin catalog has no plugin with this name."),
    "PLG003": (502, "Installing the plugin failed (pip's output is in the message)."),
    "PLG004": (409, "The plugin is disabled by the configuration (SERVERFLOW_DISABLED_PLUGINS)."),
    "PLG005": (502, "The plugin catalog cannot be read."),
    "PLG006": (409, "No package source is configured (plugin_wheelhouse or plugin_index_url)."),
    "MCP001": (400, "MCP: no tool with this name."),
    "MCP002": (502, "MCP: the agent reported a failure (or no result) for the command."),
    "MCP003": (409, "MCP: the app has no live release to restart; deploy it first."),
    "PLAN001": (404, "Plan not found."),
    "PLAN002": (409, "The plan has expired; ask for a new dry run."),
    "PLAN003": (409, "The plan was already applied, confirmed, rejected or failed; it runs once."),
    "PLAN004": (403, "This token may not apply plans (allow_apply is off); a person must confirm."),
    "PLAN005": (403, "A destructive plan runs only after a person confirms it."),
    "PLAN006": (500, "The control plane stopped while running the plan; check what it did."),
    "INT001": (500, "Internal error (logged with a reference)."),
}
