"""Registers the test actions. `test.touch` is the observable side effect negative tests
check for: if its marker file exists, something ran that should not have."""

from __future__ import annotations

from collections.abc import Callable

from serverflow_contract.actions import ActionSpec
from serverflow_agent.hookspecs import hookimpl


def _params(properties, required=()):
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


ACTIONS = [
    ActionSpec(
        name="test.touch",
        description="Create a marker file under $SERVERFLOW_TEST_MARKER_DIR.",
        kind="change",
        handler="sf_agent_testkit.handlers:touch",
        params_schema=_params(
            {"path": {"type": "string", "minLength": 1, "maxLength": 4096}}, ["path"]
        ),
        timeout=10,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="test.sleep",
        description="Sleep (and keep a grandchild process alive) to exercise the timeout.",
        kind="read",
        handler="sf_agent_testkit.handlers:sleep",
        params_schema=_params(
            {"seconds": {"type": "number", "minimum": 0, "maximum": 600}}, ["seconds"]
        ),
        timeout=1.5,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="test.allocate",
        description="Allocate this many megabytes (the memory limit is 96 MiB).",
        kind="read",
        handler="sf_agent_testkit.handlers:allocate",
        params_schema=_params(
            {"megabytes": {"type": "integer", "minimum": 1, "maximum": 4096}}, ["megabytes"]
        ),
        timeout=20,
        memory_limit_mb=96,
    ),
    ActionSpec(
        name="test.fail",
        description="Raise an exception with the given message.",
        kind="read",
        handler="sf_agent_testkit.handlers:fail",
        params_schema=_params({"message": {"type": "string", "maxLength": 200}}),
        timeout=10,
        memory_limit_mb=256,
    ),
    ActionSpec(
        name="test.echo",
        description="Return the params, and print junk to stdout on the way.",
        kind="read",
        handler="sf_agent_testkit.handlers:echo",
        params_schema=_params({"value": {}}),
        timeout=10,
        memory_limit_mb=256,
    ),
]


@hookimpl
def register_actions(register: Callable[[ActionSpec], None]) -> None:
    for spec in ACTIONS:
        register(spec)
