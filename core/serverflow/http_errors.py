"""Maps every exception to a JSON error with a stable code (or an HTML page for the dashboard)."""

from __future__ import annotations

import logging
import math
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl

import pydantic_core
from pydantic import ValidationError
from quart import Quart, Request, Response, g, jsonify, render_template, request
from quart.formparser import FormDataParser
from quart.wrappers.request import Body
from quart_schema import RequestSchemaValidationError
from tortoise.exceptions import DBConnectionError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from serverflow.errors import DatabaseError, InvalidInput, ServerFlowError, UnsupportedMediaType

log = logging.getLogger("serverflow.http")

JSON_PREFIXES = ("/api/", "/healthz", "/readyz", "/install", "/agent")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body, or VAL002.

    As RFC 8259 has it: UTF-8 only, no lone surrogate escapes (no database or encoder can
    store them), bounded nesting; pydantic-core's parser enforces all three and reports
    every failure as a ValueError, where the standard library lets a deep nesting escape
    as RecursionError.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"The request body is not valid UTF-8 (byte {exc.start}); send JSON as UTF-8.",
            code="VAL002",
        ) from None
    try:
        value = pydantic_core.from_json(text, allow_inf_nan=False)  # RFC 8259: no NaN
    except ValueError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}", code="VAL002") from None
    # JSON can only carry NUL escaped, and PostgreSQL text cannot store it: refused here so
    # both databases answer alike (a raw NUL is already invalid JSON).
    if "\\u0000" in text and _holds_nul(value):
        raise InvalidInput(
            "The request body holds a NUL character (\\u0000), which no field accepts.",
            code="VAL002",
        )
    # I-JSON (RFC 7493): numbers a double holds exactly. The audit log hashes each body
    # in RFC 8785's canonical form, which has none for others (nor does any field take
    # them); an overflowing exponent (1e400) would be infinity.
    if _MAYBE_UNSAFE_NUMBER.search(text) and _holds_unsafe_number(value):
        raise InvalidInput(
            f"The request body holds a number beyond ±{SAFE_INTEGER} or too large for a "
            "double (I-JSON, RFC 7493); send such a value as a string.",
            code="VAL002",
        )
    return value


SAFE_INTEGER = 2**53 - 1
# Sixteen digits in a row, or an exponent: the only ways to write an unsafe number.
_MAYBE_UNSAFE_NUMBER = re.compile(r"[0-9]{16}|[0-9][eE]")


def _holds_unsafe_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > SAFE_INTEGER
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_holds_unsafe_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_unsafe_number(item) for item in value)
    return False


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


async def _parse_urlencoded(
    parser: FormDataParser,
    body: Body,
    mimetype: str,
    content_length: int | None,
    options: dict[str, str],
) -> tuple[MultiDict, MultiDict]:
    # Strict also for percent-escapes: Quart would turn %FF into U+FFFD silently.
    text = (await body).decode("utf-8")
    pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    if any("\0" in key or "\0" in value for key, value in pairs):
        raise InvalidInput(
            "The form holds a NUL character (%00), which no field accepts.", code="VAL002"
        )
    return MultiDict(pairs), MultiDict()


class FormParser(FormDataParser):
    """Form parsing that refuses a body it cannot read instead of seeing an empty form.

    Quart's parser swallows undecodable bytes and unknown content types into an empty
    form, which the dashboard then answers with a misleading CSRF refusal.
    """

    async def parse(
        self,
        body: Body,
        mimetype: str,
        content_length: int | None,
        options: dict[str, str] | None = None,
    ) -> tuple[MultiDict, MultiDict]:
        options = options or {}
        parse_func = self.get_parse_func(mimetype, options)
        if parse_func is None:
            if await body:
                raise UnsupportedMediaType(
                    "Send the form as application/x-www-form-urlencoded or multipart/form-data.",
                    code="VAL005",
                )
            return MultiDict(), MultiDict()
        try:
            return await parse_func(self, body, mimetype, content_length, options)
        except UnicodeDecodeError:
            raise InvalidInput("The form is not valid UTF-8.", code="VAL002") from None
        except ValueError:  # e.g. a multipart body without its boundary
            raise InvalidInput("The form data is malformed.", code="VAL002") from None

    parse_functions = {
        **FormDataParser.parse_functions,
        "application/x-www-form-urlencoded": _parse_urlencoded,
        "application/x-url-encoded": _parse_urlencoded,
    }


class JsonRequest(Request):
    """A request whose body problems raise our errors (VAL002/VAL004/VAL005), never a 500."""

    form_data_parser_class = FormParser

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        # Parsed on each call (at most twice a request: validation, audit); the body is
        # capped at max_body_bytes.
        if not (force or self.is_json):
            if not silent and await self.get_data(cache=True):
                raise InvalidInput(
                    "Send the body as JSON with Content-Type: application/json.", code="VAL004"
                )
            return None
        try:
            return parse_json(await self.get_data(True, False, False))
        except InvalidInput:
            if silent:
                return None
            raise

    def on_json_loading_failed(self, error: Exception) -> Any:
        raise InvalidInput(f"The request body is not valid JSON: {error}", code="VAL002")


async def refuse_oversized_body() -> None:
    """Read the body before any handler, so one over `max_body_bytes` is a 413 up front.

    Quart checks the limit only when the body is read: a handler that never reads it
    would run (and commit), and a later read (the audit of the call) would turn the
    answer into a 413. A declared length over the limit is refused without reading.
    """
    await request.get_data(cache=True)


def error_code(exc: BaseException) -> str:
    """The stable code an exception is answered with (see register_error_handlers)."""
    if isinstance(exc, ServerFlowError):
        return exc.code
    if isinstance(exc, RequestSchemaValidationError):
        return "VAL001"
    if isinstance(exc, HTTPException):
        return {400: "VAL001", 404: "GEN404", 405: "GEN405", 413: "VAL003"}.get(
            exc.code or 500, f"HTTP{exc.code}"
        )
    if isinstance(exc, DBConnectionError | OSError):
        return "DB001"
    return "INT001"


def _validation_details(exc: Exception) -> list[dict[str, Any]]:
    inner = getattr(exc, "validation_error", None)
    if isinstance(inner, ValidationError):
        # Never echo the submitted values back or into logs: they may be secrets.
        return [
            {
                "field": ".".join(str(p) for p in e["loc"]) or "(body)",
                "problem": e["msg"],
                "type": e["type"],
            }
            for e in inner.errors(include_url=False, include_input=False, include_context=False)
        ]
    return [{"field": "(body)", "problem": str(inner) if inner else "invalid"}]


def _who() -> str:
    principal = g.get("principal")
    return principal.label if principal is not None else "anonymous"


def _wants_json() -> bool:
    return (
        request.path.startswith(JSON_PREFIXES)
        or request.accept_mimetypes.best == "application/json"
    )


# Refusals audited here, where every answer passes (the others are audited where they
# happen): unknown or revoked tokens, missing CSRF tokens, rate limits.
AUDITED_REFUSALS = {
    "AUTH002": "auth.token_refused",
    "AUTH006": "auth.csrf_refused",
    "RATE001": "api.rate_limited",
}


async def _audit_refusal(error: ServerFlowError) -> None:
    action = AUDITED_REFUSALS.get(error.code)
    if action is None:
        return
    from serverflow import audit
    from serverflow.auth import actor, client_ip
    from serverflow.controlplane import current

    principal, viewer = g.get("principal"), g.get("sf_viewer")  # API caller, dashboard user
    if principal is not None:
        chain, who = principal.org_id, actor(principal)
    elif viewer is not None:
        chain, who = viewer.org.id, f"user:{viewer.user.email}"
    else:
        chain, who = audit.INSTANCE, "anonymous"
    await current().refusals.note(
        chain,
        action,
        error.code,
        actor=who,
        source=client_ip(),
        target=f"{request.method} {request.path}"[:500],
    )


async def _respond(error: ServerFlowError) -> Response:
    await _audit_refusal(error)
    level = logging.ERROR if error.status >= 500 else logging.WARNING
    log.log(
        level,
        "%s %s %s -> %s %s (%s)",
        error.code,
        request.method,
        request.path,
        error.status,
        error.message,
        _who(),
        extra={
            "code": error.code,
            "status": error.status,
            "path": request.path,
            "method": request.method,
            "principal": _who(),
        },
    )
    if _wants_json():
        response = jsonify(error.as_dict())
    else:
        html = await render_template("error.html", error=error)
        response = Response(html, content_type="text/html; charset=utf-8")
    response.status_code = error.status
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(ServerFlowError)
    async def _sf(error: ServerFlowError) -> Response:
        return await _respond(error)

    @app.errorhandler(RequestSchemaValidationError)
    async def _schema(error: RequestSchemaValidationError) -> Response:
        details = _validation_details(error)
        summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
        return await _respond(
            InvalidInput(f"Invalid request: {summary}", code="VAL001", details=details)
        )

    @app.errorhandler(HTTPException)
    async def _http(error: HTTPException) -> Response:
        code = error.code or 500
        mapping = {
            400: ("VAL001", "The request is invalid."),
            401: ("AUTH001", "Authentication required."),
            404: ("GEN404", "No such page or endpoint."),
            405: ("GEN405", f"Method {request.method} is not allowed here."),
            413: ("VAL003", "The request body is larger than the configured limit."),
        }
        sf_code, message = mapping.get(code, (f"HTTP{code}", error.description or error.name))
        err = ServerFlowError(message, code=sf_code)
        err.status = code
        return await _respond(err)

    @app.errorhandler(DBConnectionError)
    async def _db(error: DBConnectionError) -> Response:
        log.error("database unavailable: %s", error)
        return await _respond(DatabaseError())

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        ref = secrets.token_hex(6)
        if isinstance(error, OSError):
            log.error("database or network failure (ref %s)", ref, exc_info=error)
            return await _respond(DatabaseError(f"A backing service is unreachable (ref {ref})."))
        log.error("unhandled error (ref %s)", ref, exc_info=error)
        return await _respond(ServerFlowError(f"Internal error; the log has details (ref {ref})."))
