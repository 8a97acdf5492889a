"""The OpenAPI document: the REST API (core and plugins), with every answer of each operation.

quart-schema documents what a route declares: its body, query, success answers and the
errors its handler raises itself (`@validate_response(ErrorOut, 409)`). The answers every
route shares come from how ServerFlow serves a request, so they are added here, in one
place, from the shape of each operation:

- every operation: 500 (INT001) and 503 (DB001, the database is unreachable);
- behind `requires` (auth.py): 401 (AUTH001/AUTH002), 403 (AUTH004, AUTH006 for a browser
  session's unsafe request without its CSRF token) and 429 (RATE001) with Retry-After;
- with path parameters: 404 (an unknown or malformed id answers like another
  organisation's);
- with a JSON body: 400 (VAL001 validation, VAL002 not UTF-8/JSON or holding NUL, VAL004
  not sent as application/json) and 413 (VAL003); a form body also 415 (VAL005);
- with a query model: 400 (VAL001).

Validation failures are 400 VAL001 (with `details`), never 422. Each error answer has the
one error schema, ErrorOut: {"error": {"code", "message", "details"}}.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from quart_schema.openapi import OpenAPIProvider
from quart_schema.typing import Model
from quart_schema.validation import (
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
    DataSource,
)
from werkzeug.routing import Rule

from serverflow.api.schemas import ErrorOut
from serverflow.auth import requires
from serverflow.models import Role

ANSWERS_ATTRIBUTE = "_serverflow_answers"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}

DESCRIPTIONS = {
    400: "The request is invalid.",
    401: "Authentication required (AUTH001), or the API token is malformed, unknown, "
    "expired or revoked (AUTH002).",
    403: "The caller's role does not allow this (AUTH004), or the code says what else does not.",
    404: "Not found: no such object in the caller's organisation.",
    409: "This conflicts with the current state.",
    413: "The request body is larger than the configured limit (VAL003).",
    415: "The body's Content-Type is not accepted here (VAL005).",
    429: "Too many calls (RATE001) or attempts (AUTH005): wait as Retry-After says.",
    500: "Internal error (INT001), logged with the reference the message gives.",
    502: "A backing service (a package index, the plugin catalog, an agent) failed.",
    503: "The database is unreachable (DB001).",
}
BODY_400 = (
    "The request is invalid: it failed validation (VAL001; `details` lists each field), "
    "is not valid UTF-8 or JSON or holds a NUL character (VAL002), or was not sent as "
    "application/json (VAL004)."
)
QUERY_400 = "A query parameter failed validation (VAL001; `details` lists each one)."
CSRF_403 = (
    "The caller's role does not allow this (AUTH004), a browser session's request lacks "
    "its CSRF token (AUTH006, header X-CSRF-Token), or the code says what else does not."
)
RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before trying again (at least 1).",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}

F = TypeVar("F", bound=Callable[..., Any])


def answers(
    status: int,
    description: str,
    media_type: str | None = None,
    schema: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Declare an answer quart-schema cannot: one without a body (204), or not JSON (with
    the `schema` of its body; of each event for text/event-stream, as OpenAPI 3.1 has it)."""

    def decorator(func: F) -> F:
        declared = dict(getattr(func, ANSWERS_ATTRIBUTE, {}))
        declared[status] = (description, media_type, schema)
        setattr(func, ANSWERS_ATTRIBUTE, declared)
        return func

    return decorator


async def _probe() -> None:
    """Only its `requires` wrapper is used: every such wrapper shares one code object."""


_REQUIRES_CODE = requires(Role.VIEWER)(_probe).__code__


def behind_requires(view: Callable[..., Any]) -> bool:
    """Whether a view authenticates through `requires` (anywhere in its decorator chain)."""
    seen: Any = view
    while seen is not None:
        if getattr(seen, "__code__", None) is _REQUIRES_CODE:
            return True
        seen = getattr(seen, "__wrapped__", None)
    return False


def error_statuses(method: str, rule: Rule, view: Callable[..., Any]) -> dict[int, str]:
    """The error answers an operation can give however its handler goes, with why."""
    found = {500: DESCRIPTIONS[500], 503: DESCRIPTIONS[503]}
    if behind_requires(view):
        found[401] = DESCRIPTIONS[401]
        found[403] = CSRF_403 if method in UNSAFE else DESCRIPTIONS[403]
        found[429] = DESCRIPTIONS[429]
    if rule.arguments:
        found[404] = DESCRIPTIONS[404]
    if getattr(view, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, None) is not None:
        found[400] = QUERY_400
    body = getattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE, None)
    if body is not None:
        found[400] = BODY_400
        found[413] = DESCRIPTIONS[413]
        if body[1] != DataSource.JSON:
            found[415] = DESCRIPTIONS[415]
    return found


def error_response(description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": dict(ERROR_REF)}},
    }
    return response


class ApiOnlyOpenAPI(OpenAPIProvider):
    """The document covers the REST API (core and plugins), not pages or assets, and
    declares every answer each operation can give."""

    def generate_rules(self) -> Iterable[Rule]:
        return (r for r in super().generate_rules() if r.rule.startswith("/api/"))

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        document["components"]["schemas"].update(self._error_schemas())
        return document

    def _error_schemas(self) -> dict[str, Any]:
        inline, components = super().build_response_object(ErrorOut, None)
        return {**components, "ErrorOut": inline["content"]["application/json"]["schema"]}

    def build_response_object(
        self, model: type[Model], headers_model: type[Model] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if model is ErrorOut:  # one shared schema for every error answer (see schema())
            return error_response(""), {}
        return super().build_response_object(model, headers_model)

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        view = self._app.view_functions[rule.endpoint]
        declared: dict[int, tuple[str, str | None, dict[str, Any] | None]] = getattr(
            view, ANSWERS_ATTRIBUTE, {}
        )
        authenticated = behind_requires(view)
        for operations in paths.values():
            for method, operation in operations.items():
                # quart-schema shares one responses object between a rule's methods.
                responses: dict[int, Any] = copy.deepcopy(operation["responses"])
                for status, (description, media_type, schema) in declared.items():
                    response = responses.setdefault(status, {"description": description})
                    response["description"] = response.get("description") or description
                    if media_type is not None:
                        content = response.setdefault("content", {})
                        content[media_type] = {"schema": schema or {"type": "string"}}
                for status, why in error_statuses(method.upper(), rule, view).items():
                    response = responses.setdefault(status, error_response(why))
                    response["description"] = response.get("description") or why
                for status, response in responses.items():
                    if status >= 400 and not response.get("description"):
                        response["description"] = DESCRIPTIONS.get(status, "An error.")
                if 429 in responses:
                    responses[429]["headers"] = {**responses[429].get("headers", {}), **RETRY_AFTER}
                if not authenticated:
                    operation.setdefault("security", [])  # nothing to authenticate
                operation["responses"] = dict(sorted(responses.items()))
        return paths, components
