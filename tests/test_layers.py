"""Imports run one way: surfaces -> control plane -> domain packages, never back."""

from __future__ import annotations

import ast
from importlib.util import resolve_name
from pathlib import Path

import serverflow

ROOT = Path(serverflow.__file__).parent
SURFACES = ("serverflow.api", "serverflow.web", "serverflow.mcp", "serverflow.agent_endpoint")
# The top-level packages and modules whose imports were straightened out.
LAYERED = {
    "serverflow.agents",
    "serverflow.controlplane",
    "serverflow.operations",
    "serverflow.plans",
    "serverflow.mcp",
    "serverflow.agent_endpoint",
    "serverflow.apps",
    "serverflow.schemas",
    "serverflow.api",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside a function."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_name("." * node.level + (node.module or ""), package)
            names.add(source)
            # `from serverflow import plans` imports the module serverflow.plans.
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


IMPORTS = {
    module_name(path): imported(path)
    for path in ROOT.rglob("*.py")
    if "migrations" not in path.parts
}


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def offending(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in IMPORTS.items()
        if within(module, importers)
        for name in names
        if within(name, forbidden)
    )


def top(name: str) -> str:
    return ".".join(name.split(".")[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    def walk(path: list[str]) -> list[str] | None:
        for after in sorted(graph[path[-1]]):
            if after in path:
                return [*path[path.index(after) :], after]
            found = walk([*path, after])
            if found:
                return found
        return None

    return next((c for start in sorted(graph) if (c := walk([start]))), None)


def test_the_domain_imports_no_surface() -> None:
    domain = ("serverflow.operations", "serverflow.plans", "serverflow.apps", "serverflow.schemas")
    assert offending(domain, ("serverflow.api", "serverflow.web", "serverflow.mcp")) == []


def test_agents_import_neither_the_control_plane_nor_a_surface() -> None:
    assert offending(("serverflow.agents",), ("serverflow.controlplane", *SURFACES)) == []


def test_no_import_cycle_between_the_layered_packages() -> None:
    graph: dict[str, set[str]] = {package: set() for package in LAYERED}
    for module, names in IMPORTS.items():
        for name in names:
            if top(module) in LAYERED and top(name) in LAYERED and top(name) != top(module):
                graph[top(module)].add(top(name))
    assert find_cycle(graph) is None
    assert graph["serverflow.mcp"] >= {"serverflow.operations", "serverflow.plans"}  # parsed
    assert graph["serverflow.api"] >= {"serverflow.apps", "serverflow.plans"}
