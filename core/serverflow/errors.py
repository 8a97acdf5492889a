"""The error hierarchy: each error has a stable code, an HTTP status and an actionable message.

Codes are part of the public API: never reuse or renumber one. `docs/errors.md` lists them.
"""

from __future__ import annotations

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
    code = "AUTH005"
    status = 429
    default_message = "Too many attempts; wait and try again."


class AgentUnavailable(ServerFlowError):
    code = "AGT001"
    status = 409
    default_message = "The server's agent is not connected."


# Codes that are raised with an explicit `code=`; listed here so docs and tests see them all.
CODES: dict[str, str] = {
    "AUTH001": "Authentication required.",
    "AUTH002": "The API token is malformed, unknown, expired or revoked.",
    "AUTH003": "Wrong email or password.",
    "AUTH004": "Your role does not allow this action.",
    "AUTH005": "Too many failed sign-in attempts; wait before trying again.",
    "AUTH006": "The CSRF token is missing or does not match; reload the page.",
    "VAL001": "The request body or parameters failed validation.",
    "VAL002": "The request body is not valid JSON.",
    "VAL003": "The request body is larger than the configured limit.",
    "VAL004": "The request must be sent as application/json.",
    "GEN404": "No such endpoint.",
    "GEN405": "Method not allowed on this endpoint.",
    "SRV001": "Server not found.",
    "SRV002": "A server with this name already exists in the organisation.",
    "TOK001": "API token not found.",
    "TOK002": "A token cannot be given a role higher than its creator's.",
    "MEM001": "Member not found.",
    "MEM002": "The organisation must keep at least one owner.",
    "MEM003": "No user with this email exists.",
    "MEM004": "This user is already a member.",
    "ORG001": "Organisation not found.",
    "USR001": "A user with this email already exists.",
    "USR002": "User not found.",
    "CFG001": "The configuration is invalid.",
    "CFG002": "A secret file has unsafe permissions.",
    "DB001": "The database is unreachable.",
    "DB002": "The database role is a superuser or bypasses row-level security.",
    "AGT001": "The server's agent is not connected.",
    "INT001": "Internal error (logged with a reference).",
}
