"""Schemathesis against the live OpenAPI document: every operation, with a token of each role.

A real `serverflow up` (SQLite, its data in tmp_path) serves the document; schemathesis
loads it from /api/v1/openapi.json and calls each operation with generated valid and
invalid input, once with generated path ids and once with the ids of real objects (a
server, an app, a member, a token, a deployment), as every principal of `role_tokens`.
No answer may be a 5xx or fall outside the document (status, content type, body schema,
declared headers).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serverflow_testkit.controlplane import Deployment, bootstrap, run_cli

pytestmark = pytest.mark.slow

# The principals that run every operation; each is a token of the Acme organisation.
ROLES = ("viewer", "member", "admin", "owner", "operator")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Per operation, role and pass: about 2,500 calls in all; more for a deeper run by hand.
EXAMPLES = int(os.environ.get("SERVERFLOW_SCHEMATHESIS_EXAMPLES", "5"))
SHOWN = 4000  # characters of each failure in the report


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = tmp_path_factory.mktemp("schemathesis") / "data"
    # Thousands of calls a minute per token: the limit must not turn the run into 429s.
    dep = bootstrap(data, env={"SERVERFLOW_API_RATE_PER_MINUTE": "1000000"})
    try:
        yield dep
    finally:
        dep.cp.stop()


@pytest.fixture(scope="module")
def role_tokens(deployment: Deployment) -> dict[str, str]:
    """Who runs the operations: role name -> API token (one line each)."""
    return {role: deployment.tokens[role] for role in ROLES}


def seed(dep: Deployment) -> dict[str, str]:
    """Real objects for the operations to find, by the name of their path parameter."""
    owner = dep.http("owner")
    server = owner.post("/servers", json={"name": "web-1"})
    assert server.status_code == 201, server.text
    app = owner.post(
        "/apps",
        json={"name": "shop", "repo": "https://git.example/shop.git", "servers": ["web-1"]},
    )
    assert app.status_code == 201, app.text
    deploy = owner.post(f"/apps/{app.json()['id']}/deploy", json={})
    assert deploy.status_code == 202, deploy.text
    token = owner.post("/tokens", json={"name": "target", "role": "viewer"})
    assert token.status_code == 201, token.text
    run_cli(
        "users", "create", "member@acme.test", "--org", "acme", "--role", "member", env=dep.cp.env
    )
    members = owner.get("/members").json()["members"]
    member = next(m for m in members if m["email"] == "member@acme.test")
    return {
        "server_id": server.json()["id"],
        "app_id": app.json()["id"],
        "deployment_id": deploy.json()["deployments"][0]["id"],
        "token_id": token.json()["id"],
        "member_id": member["id"],
        "name": "runtime_pm2",
    }


def path_parameters(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)


def run_operation(
    operation: Any,
    call: Callable[[Any], Any],
    mode: GenerationMode,
    fixed: dict[str, str] | None,
) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,  # the same calls on every run
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    def test(case: Any) -> None:
        call(case)

    test()


def test_every_operation_as_every_role(deployment: Deployment, role_tokens: dict[str, str]) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(deployment.url + "/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, "the document lists too few operations"
    ids = seed(deployment)
    statuses: dict[str, Counter[int]] = {role: Counter() for role in role_tokens}
    failures: list[str] = []

    for role, token in role_tokens.items():
        headers = {"Authorization": f"Bearer {token}"}

        def call(case: Any, role: str = role, headers: dict[str, str] = headers) -> None:
            response = case.call(base_url=deployment.url, headers=headers, timeout=30)
            statuses[role][response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)

        for operation in operations:
            names = path_parameters(operation.path)
            passes: list[tuple[GenerationMode, dict[str, str] | None]] = [
                (GenerationMode.POSITIVE, None),
                (GenerationMode.NEGATIVE, None),
            ]
            if any(name in ids for name in names):
                passes.append((GenerationMode.POSITIVE, {n: ids[n] for n in names if n in ids}))
            for mode, fixed in passes:
                try:
                    run_operation(operation, call, mode, fixed)
                except (Exception, BaseExceptionGroup) as exc:
                    what = f"{role} {operation.label} ({mode.value}{', real ids' if fixed else ''})"
                    failures.append(f"{what}:\n{str(exc)[:SHOWN]}")

    took = time.monotonic() - started
    calls = sum(sum(counts.values()) for counts in statuses.values())
    summary = {role: dict(sorted(counts.items())) for role, counts in statuses.items()}
    print(f"schemathesis: {calls} calls in {took:.0f} s; answers by role: {json.dumps(summary)}")
    assert not failures, f"{len(failures)} failing operation runs:\n\n" + "\n\n".join(failures)
    for role, counts in statuses.items():
        # Each token worked: its calls got past authentication, some all the way.
        assert any(200 <= status < 300 for status in counts), (role, counts)
        assert counts[401] < sum(counts.values()) / 2, (role, counts)
    # Roles made a difference: a viewer is refused changes an owner may make.
    assert statuses["viewer"][403] > statuses["owner"][403]
