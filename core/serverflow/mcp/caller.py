"""Who is calling the MCP endpoint: set per HTTP request by the endpoint, read by tools.

The SDK runs each tool call with the context of the HTTP request that carried it (its
dispatcher copies the sender's context variables), the mechanism its own auth middleware
relies on; so a tool always sees the token of its own request.
"""

from __future__ import annotations

from contextvars import ContextVar

from serverflow.auth import Principal
from serverflow.errors import AuthenticationRequired

CALLER: ContextVar[Principal | None] = ContextVar("serverflow_mcp_caller", default=None)


def caller() -> Principal:
    principal = CALLER.get()
    if principal is None:  # the endpoint authenticates first: this is a wiring bug
        raise AuthenticationRequired("this MCP call carries no authenticated token")
    return principal
