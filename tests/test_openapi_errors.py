"""The OpenAPI document declares every answer an operation can give, each error with ErrorOut.

The walk checks the document against the shape of each operation; the probes check it
against what the API really answers (anonymous calls, bad bodies, an exhausted rate limit).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from quart import Blueprint, Quart
from quart_schema import QuartSchema, validate_request, validate_response
from quart_schema.validation import DataSource

from serverflow.api.openapi import ApiOnlyOpenAPI, answers
from serverflow.auth import requires
from serverflow.models import Role
from tests.conftest import ControlPlaneUnderTest, control_plane_with

FORM = "application/x-www-form-urlencoded"
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = [
        (method, path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    return found


def expected_errors(doc: dict[str, Any], op: dict[str, Any]) -> set[int]:
    """What every operation of this shape can answer, whatever its handler does."""
    codes = {500, 503}
    if op.get("security", doc.get("security")):  # authenticated: auth, roles, rate limit
        codes |= {401, 403, 429}
    params = op.get("parameters", [])
    if any(p["in"] == "path" for p in params):
        codes.add(404)
    if any(p["in"] == "query" for p in params):
        codes.add(400)
    body = op.get("requestBody", {}).get("content", {})
    if body:
        codes |= {400, 413}
        if set(body) - {"application/json"}:
            codes.add(415)
    return codes


def refs_error_schema(response: dict[str, Any]) -> bool:
    return response.get("content", {}).get("application/json", {}).get("schema") == ERROR_REF


async def document(cp: ControlPlaneUnderTest) -> dict[str, Any]:
    response = await cp.client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = await response.get_json()
    return doc


async def test_every_operation_declares_its_error_answers(
    control_plane: ControlPlaneUnderTest,
) -> None:
    doc = await document(control_plane)
    ops = operations(doc)
    assert len(ops) >= 40, "the walk found too few operations"
    error_out = doc["components"]["schemas"]["ErrorOut"]
    assert error_out["required"] == ["error"]
    body_ref = error_out["properties"]["error"]["$ref"].rsplit("/", 1)[-1]
    body = doc["components"]["schemas"][body_ref]
    assert set(body["properties"]) == {"code", "message", "details"}
    assert set(body["required"]) == {"code", "message"}

    problems = []
    for method, path, op in ops:
        where = f"{method.upper()} {path}"
        declared = {int(status): response for status, response in op["responses"].items()}
        if not any(200 <= s < 300 for s in declared):
            problems.append(f"{where}: no success answer")
        missing = expected_errors(doc, op) - set(declared)
        if missing:
            problems.append(f"{where}: {sorted(missing)} not declared")
        for status, response in declared.items():
            if status >= 400 and not refs_error_schema(response):
                problems.append(f"{where}: {status} lacks the error schema")
            if status >= 400 and not response.get("description"):
                problems.append(f"{where}: {status} does not say what it means")
        if 429 in declared:
            retry = declared[429].get("headers", {}).get("Retry-After", {})
            if not retry.get("required") or retry.get("schema", {}).get("type") != "integer":
                problems.append(f"{where}: 429 does not declare its Retry-After header")
        body_types = set(op.get("requestBody", {}).get("content", {}))
        if 415 in declared and body_types == {"application/json"}:
            problems.append(f"{where}: declares 415, but a JSON body is refused with 400 VAL004")
        if method == "get" and 413 in declared:
            problems.append(f"{where}: a GET takes no body, yet declares 413")
    assert not problems, "\n".join(problems)

    # Which codes land where, spot-checked on operations of each shape.
    paths = doc["paths"]
    assert set(paths["/api/v1/apps"]["get"]["responses"]) == {
        "200", "401", "403", "429", "500", "503"
    }  # fmt: skip
    assert set(paths["/api/v1/servers"]["post"]["responses"]) == {
        "201", "400", "401", "403", "409", "413", "429", "500", "503"
    }  # fmt: skip
    assert {"204", "404"} <= set(paths["/api/v1/servers/{server_id}"]["delete"]["responses"])
    assert "400" in paths["/api/v1/audit"]["get"]["responses"]  # its query is validated
    logs = paths["/api/v1/deployments/{deployment_id}/logs"]["get"]["responses"]["200"]
    assert set(logs["content"]) == {"application/json", "text/event-stream"}


def _url(path: str) -> str:
    """A URL of the path: random ids (nothing to find or destroy), names elsewhere."""

    def value(match: re.Match[str]) -> str:
        return str(uuid.uuid4()) if match.group(1).endswith("_id") else "no-such-name"

    return re.sub(r"\{(\w+)\}", value, path)


async def test_the_answers_the_api_gives_are_declared(
    control_plane: ControlPlaneUnderTest,
) -> None:
    """Anonymous calls, bad JSON and oversized bodies: each answer's status is declared."""
    doc = await document(control_plane)
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    limit = control_plane.settings.max_body_bytes
    problems = []
    for method, path, op in operations(doc):
        declared = {int(s) for s in op["responses"]}
        url = _url(path)
        probes: list[tuple[str, dict[str, Any], int]] = [("anonymous", {}, 401)]
        if "requestBody" in op:
            owner = tenant.auth()
            probes += [
                ("invalid JSON", {"data": b"{", "headers": owner}, 400),
                ("not JSON", {"data": b"x=1", "headers": {**owner, "Content-Type": FORM}}, 400),
                ("oversized", {"data": b" " * (limit + 1), "headers": owner}, 413),
            ]
        for label, kwargs, wanted in probes:
            headers = kwargs.pop("headers", {})
            if "data" in kwargs and "Content-Type" not in headers:
                headers = {**headers, "Content-Type": "application/json"}
            response = await client.open(url, method=method.upper(), headers=headers, **kwargs)
            body = await response.get_json()
            where = f"{method.upper()} {path} [{label}]"
            # An operator-only route refuses the owner before reading the body.
            if response.status_code not in (wanted, 403):
                problems.append(f"{where}: wanted {wanted}, got {response.status_code}")
            if response.status_code not in declared:
                problems.append(f"{where}: {response.status_code} is not declared")
            if not (isinstance(body, dict) and {"code", "message"} <= set(body["error"])):
                problems.append(f"{where}: the answer is not an ErrorOut")
    assert not problems, "\n".join(problems)


async def test_a_rate_limited_call_answers_as_declared(tmp_path: Path, db_url: str) -> None:
    """An exhausted rate limit is the declared 429, with the declared Retry-After."""
    async with control_plane_with(db_url, tmp_path, api_rate_per_minute=2) as cp:
        tenant = await cp.tenant("Acme")
        client = cp.client()
        statuses = [
            (await client.get("/api/v1/apps", headers=tenant.auth())).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        limited = await client.get("/api/v1/apps", headers=tenant.auth())
        assert int(limited.headers["Retry-After"]) >= 1
        assert (await limited.get_json())["error"]["code"] == "RATE001"
        doc = await (await client.get("/api/v1/openapi.json")).get_json()
        declared = doc["paths"]["/api/v1/apps"]["get"]["responses"]["429"]
        assert declared["headers"]["Retry-After"]["required"] is True


class Thing(BaseModel):
    name: str


def test_codes_follow_the_shape_of_each_operation() -> None:
    """A public route gets no auth answers; a form body 415; a GET no body answers."""
    app = Quart(__name__)
    bp = Blueprint("x", __name__, url_prefix="/api/v1")

    @bp.post("/public")
    @validate_request(Thing)
    @validate_response(Thing, 201)
    async def public(data: Thing) -> tuple[Thing, int]:
        return data, 201

    @bp.post("/form/<thing_id>")
    @requires(Role.MEMBER)
    @validate_request(Thing, source=DataSource.FORM)
    @validate_response(Thing)
    async def form(thing_id: str, data: Thing) -> Thing:
        return data

    @bp.get("/things")
    @requires(Role.VIEWER)
    @validate_response(Thing)
    async def things() -> Thing:
        return Thing(name="x")

    @bp.delete("/things/<thing_id>")
    @answers(204, "Gone.")
    @requires(Role.ADMIN)
    async def drop(thing_id: str) -> tuple[str, int]:
        return "", 204

    @app.get("/page")
    async def page() -> str:
        return "not in the document"

    app.register_blueprint(bp)
    QuartSchema(
        app,
        openapi_path="/api/v1/openapi.json",
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
        openapi_provider_class=ApiOnlyOpenAPI,
    )
    doc = app.extensions["QUART_SCHEMA"].openapi_provider.schema()

    def codes(path: str, method: str) -> set[int]:
        return {int(s) for s in doc["paths"][path][method]["responses"]}

    assert "/page" not in doc["paths"]
    assert doc["paths"]["/api/v1/public"]["post"]["security"] == []
    assert codes("/api/v1/public", "post") == {201, 400, 413, 500, 503}
    assert codes("/api/v1/form/{thing_id}", "post") == {
        200, 400, 401, 403, 404, 413, 415, 429, 500, 503
    }  # fmt: skip
    assert codes("/api/v1/things", "get") == {200, 401, 403, 429, 500, 503}
    assert codes("/api/v1/things/{thing_id}", "delete") == {204, 401, 403, 404, 429, 500, 503}
    assert "content" not in doc["paths"]["/api/v1/things/{thing_id}"]["delete"]["responses"][204]


@pytest.mark.parametrize("method", ["put", "patch"])
async def test_methods_of_one_rule_get_their_own_answers(method: str) -> None:
    """quart-schema shares one responses object between a rule's methods; ours does not."""
    app = Quart(__name__)

    @app.route("/api/v1/both", methods=["GET", method.upper()])
    @requires(Role.VIEWER)
    async def both() -> str:
        return ""

    QuartSchema(app, openapi_path="/api/v1/openapi.json", openapi_provider_class=ApiOnlyOpenAPI)
    doc = app.extensions["QUART_SCHEMA"].openapi_provider.schema()
    ops = doc["paths"]["/api/v1/both"]
    assert "403" in {str(s) for s in ops["get"]["responses"]}
    assert "AUTH006" not in ops["get"]["responses"][403]["description"]
    assert "AUTH006" in ops[method]["responses"][403]["description"]
