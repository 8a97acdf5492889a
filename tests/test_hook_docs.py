"""Every hook in a hookspecs.py is documented in docs/writing-a-plugin.md (as datasette does)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

from serverflow import hookspecs as control_hookspecs
from serverflow_agent import hookspecs as agent_hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-a-plugin.md"


def hooks(module: ModuleType, project: str) -> list[tuple[str, list[str]]]:
    found = []
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if hasattr(function, f"{project}_spec"):
            found.append((name, list(inspect.signature(function).parameters)))
    return found


HOOKS = [
    *[("control plane", *h) for h in hooks(control_hookspecs, "serverflow")],
    *[("agent", *h) for h in hooks(agent_hookspecs, "serverflow_agent")],
]


def test_the_hook_lists_are_found() -> None:
    names = {name for _, name, _ in HOOKS}
    assert {"register_runtimes", "register_actions", "on_event"} <= names


@pytest.mark.parametrize(("side", "name", "args"), HOOKS, ids=[f"{s}:{n}" for s, n, _ in HOOKS])
def test_hook_is_documented(side: str, name: str, args: list[str]) -> None:
    """The guide's hook table names the hook with its arguments, as a plugin writes it."""
    signature = f"`{name}({', '.join(args)})`"
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"^\|\s*`", line)]
    assert any(signature in row for row in rows), (
        f"the {side} hook {name} is not in a hook table of {DOC.name} as {signature}"
    )
