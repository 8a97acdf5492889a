"""The import rules of the contract (docs/architecture.md, "The contract").

- core (`serverflow`) imports nothing of the agent but `serverflow_contract`;
- the agent (`serverflow_agent`) never imports core;
- the contract imports neither;
- a plugin imports the contract and its own side's public API (`serverflow.plugin_api` from
  its control-plane side, `serverflow_agent.plugin_api` from its agent side), never
  another plugin and never the other side.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "import_rules" / "plugins"
CORE, AGENT, CONTRACT = "serverflow", "serverflow_agent", "serverflow_contract"
PUBLIC = {CORE: f"{CORE}.plugin_api", AGENT: f"{AGENT}.plugin_api"}
SIDES = {"serverflow": CORE, "serverflow_agent": AGENT}  # entry-point group -> side


def top(module: str) -> str:
    return module.split(".", 1)[0]


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, [every `module.name`]) for each import (function-level ones too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [f"{node.module}.{a.name}" for a in node.names]


def targets(module: str, names: list[str]) -> list[str]:
    """What an import takes from outside: `from serverflow import plugin_api` takes
    serverflow.plugin_api, `from serverflow.models import App` takes serverflow.models."""
    return names if module in (CORE, AGENT) and names else [module]


def sources(package_dir: Path) -> Iterator[Path]:
    for path in sorted(package_dir.rglob("*.py")):
        if "migrations" not in path.parts and "tests" not in path.relative_to(package_dir).parts:
            yield path


@dataclass
class Plugin:
    root: Path
    packages: dict[str, Path] = field(default_factory=dict)  # import name -> folder
    entry_points: dict[str, list[str]] = field(default_factory=dict)  # side -> modules


def find_plugins(folder: Path) -> list[Plugin]:
    found = []
    for pyproject in sorted(folder.glob("**/pyproject.toml")):
        if "tests" in pyproject.relative_to(folder).parts:
            continue
        plugin = Plugin(pyproject.parent)
        for init in sorted(pyproject.parent.glob("*/__init__.py")):
            if init.parent.name != "tests":
                plugin.packages[init.parent.name] = init.parent
        groups = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {})
        for group, side in SIDES.items():
            modules = [value.split(":")[0] for value in groups.get(group, {}).values()]
            plugin.entry_points[side] = modules
        found.append(plugin)
    return found


def module_name(plugin: Plugin, path: Path) -> str:
    for name, folder in plugin.packages.items():
        if path.is_relative_to(folder):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def check_core_agent_contract(root: Path, plugin_packages: set[str]) -> list[str]:
    rules = {
        root / "core" / CORE: {AGENT} | plugin_packages,
        root / "agent" / AGENT: {CORE} | plugin_packages,
        root / "agent" / CONTRACT: {CORE, AGENT} | plugin_packages,
    }
    problems = []
    for folder, forbidden in rules.items():
        for path in sources(folder):
            for line, module, _ in imports(path):
                if top(module) in forbidden:
                    rel = path.relative_to(root)
                    problems.append(f"{rel}:{line}: {folder.name} may not import {module}")
    return problems


def check_plugins(folder: Path) -> list[str]:
    plugins = find_plugins(folder)
    every_package = {name for p in plugins for name in p.packages}
    problems: list[str] = []
    for plugin in plugins:
        own = set(plugin.packages)
        graph: dict[str, set[str]] = {}
        outside: dict[str, list[tuple[Path, int, str]]] = {}
        for package in plugin.packages.values():
            for path in sources(package):
                name = module_name(plugin, path)
                graph[name] = set()
                outside[name] = []
                for line, module, names in imports(path):
                    if top(module) in own:
                        graph[name].update([module, *names])
                        continue
                    outside[name].append((path, line, module))
                    if top(module) in every_package:
                        problems.append(f"{path}:{line}: imports another plugin ({module})")
                        continue
                    for target in targets(module, names):
                        if top(target) in (CORE, AGENT) and target != PUBLIC[top(target)]:
                            problems.append(
                                f"{path}:{line}: imports {target}; a plugin may use "
                                f"{PUBLIC[top(target)]} and {CONTRACT} only"
                            )
        for side, roots in plugin.entry_points.items():
            other = AGENT if side == CORE else CORE
            seen, todo = set(), [r for r in roots if r in graph]
            while todo:
                name = todo.pop()
                if name in seen:
                    continue
                seen.add(name)
                todo.extend(m for m in graph[name] if m in graph)
                for path, line, module in outside[name]:
                    if top(module) == other:
                        problems.append(
                            f"{path}:{line}: {module} is the {other} side, reached from the "
                            f"{side} entry point"
                        )
    return problems


def test_the_tree_keeps_the_import_rules() -> None:
    packages = {name for p in find_plugins(ROOT / "plugins") for name in p.packages}
    assert "serverflow_runtime_pm2" in packages
    problems = check_core_agent_contract(ROOT, packages) + check_plugins(ROOT / "plugins")
    assert problems == []


def test_a_forbidden_import_is_named() -> None:
    """The fixture plugin breaks each plugin rule once; the check names every one."""
    problems = [p.replace(str(FIXTURE) + "/", "") for p in check_plugins(FIXTURE)]
    assert sorted(problems) == sorted(
        [
            "sf_bad/sf_bad/control.py:3: imports serverflow.models; a plugin may use "
            "serverflow.plugin_api and serverflow_contract only",
            "sf_bad/sf_bad/control.py:7: imports another plugin (sf_other)",
            "sf_bad/sf_bad/shared.py:1: serverflow_agent.plugin_api is the serverflow_agent "
            "side, reached from the serverflow entry point",
            "sf_bad/sf_bad/agent.py:5: imports serverflow_agent.deploy.settings; a plugin may "
            "use serverflow_agent.plugin_api and serverflow_contract only",
        ]
    )


def test_core_importing_the_agent_is_named(tmp_path: Path) -> None:
    core = tmp_path / "core" / CORE
    core.mkdir(parents=True)
    (core / "bad.py").write_text("from serverflow_agent.config import state_dir_from\n")
    (tmp_path / "agent" / AGENT).mkdir(parents=True)
    contract = tmp_path / "agent" / CONTRACT
    contract.mkdir(parents=True)
    (contract / "leak.py").write_text("def f():\n    import serverflow.models\n")
    assert check_core_agent_contract(tmp_path, set()) == [
        "core/serverflow/bad.py:1: serverflow may not import serverflow_agent.config",
        "agent/serverflow_contract/leak.py:2: serverflow_contract may not import serverflow.models",
    ]


def undeclared_imports(plugin: Plugin) -> list[str]:
    """Imports of a plugin's packages that no dependency in its pyproject.toml provides."""
    import importlib.metadata
    import re
    import sys

    project = tomllib.loads((plugin.root / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[\s<>=!~\[;(]", dep, maxsplit=1)[0].lower().replace("_", "-")
        for dep in project.get("dependencies", [])
    }
    from serverflow.agents.wheels import top_packages

    providers = {k: set(v) for k, v in importlib.metadata.packages_distributions().items()}
    for dist in importlib.metadata.distributions():  # editable installs list no files
        for name in top_packages(dist):
            providers.setdefault(name, set()).add(dist.metadata["Name"])
    problems = []
    for package in plugin.packages.values():
        for path in sources(package):
            for line, module, _ in imports(path):
                name = top(module)
                if (
                    name in sys.stdlib_module_names
                    or name in plugin.packages
                    or name == "__future__"
                ):
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(name, {name})}
                if not dists & declared:
                    problems.append(f"{path.relative_to(plugin.root)}:{line}: {module} ({dists})")
    return problems


def test_each_plugin_declares_what_it_imports() -> None:
    plugins = find_plugins(ROOT / "plugins")
    assert plugins
    assert {str(p.root.name): undeclared_imports(p) for p in plugins} == {
        str(p.root.name): [] for p in plugins
    }


def test_an_undeclared_import_is_named() -> None:
    (bad,) = [p for p in find_plugins(FIXTURE) if p.root.name == "sf_bad"]
    problems = undeclared_imports(bad)
    assert any("sf_bad/control.py:3: serverflow.models" in p for p in problems), problems
