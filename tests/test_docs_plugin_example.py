"""The example plugin in docs/writing-a-plugin.md builds, installs and loads as the guide says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-a-plugin.md"
MARKER = re.compile(r"^<!-- file: (\S+) -->$", re.M)
# A marker line, then a fenced block; the body runs to the next fence at a line start.
FILE_BLOCK = re.compile(
    r"^<!-- file: (?P<path>\S+) -->\n```[\w-]*\n(?P<body>.*?)^```$", re.M | re.S
)

# What the guide promises the example registers.
DISTRIBUTION = "serverflow-hello"
TEMPLATE = "hello-page"
ACTION = "hello.greet"
HANDLER = "serverflow_hello.actions:hello"


@dataclass(frozen=True)
class Installed:
    root: Path
    env: dict[str, str]
    project: dict[str, Any]

    @property
    def control_plugin(self) -> str:
        (name,) = self.project["entry-points"]["serverflow"]
        return str(name)

    @property
    def agent_plugin(self) -> str:
        (name,) = self.project["entry-points"]["serverflow_agent"]
        return str(name)


def doc_files() -> dict[str, str]:
    text = DOC.read_text()
    files = {m["path"]: m["body"] for m in FILE_BLOCK.finditer(text)}
    markers = MARKER.findall(text)
    assert sorted(files) == sorted(markers), "a file marker without a code block after it"
    assert len(set(markers)) == len(markers), "a file appears twice in the guide"
    return files


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def python(installed: Installed, code: str, *args: str) -> str:
    return run([sys.executable, "-c", code, *args], installed.env, installed.root).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("plugin-doc")
    plugin = root / DISTRIBUTION
    for rel, body in doc_files().items():
        path = PurePosixPath(rel)
        assert not path.is_absolute() and ".." not in path.parts, rel
        target = plugin.joinpath(*path.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)

    # Only this install is visible, whatever SERVERFLOW_* the caller has set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")}
    env.update(
        PYTHONPATH=str(root / "site"),
        SERVERFLOW_DATA_DIR=str(root / "data"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INDEX="1",
    )
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    run([*pip, "--target", str(root / "site"), str(plugin)], env, root)
    project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
    return Installed(root=root, env=env, project=project)


def control_plane_plugins(installed: Installed, **env: str) -> dict[str, dict[str, Any]]:
    code = "from serverflow.cli import main; main()"
    proc = run(
        [sys.executable, "-c", code, "plugins", "list", "--json"],
        {**installed.env, **env},
        installed.root,
    )
    return {row["name"]: row for row in json.loads(proc.stdout)}


def test_guide_holds_the_whole_plugin() -> None:
    assert {
        "pyproject.toml",
        "README.md",
        "serverflow_hello/__init__.py",
        "serverflow_hello/control.py",
        "serverflow_hello/agent.py",
        "serverflow_hello/actions.py",
    } <= set(doc_files())


def test_control_plane_lists_the_plugin(installed: Installed) -> None:
    assert installed.project["name"] == DISTRIBUTION
    row = control_plane_plugins(installed)[installed.control_plugin]
    assert row["status"] == "enabled", row["error"]
    assert row["error"] is None
    assert row["distribution"] == DISTRIBUTION
    assert row["version"] == installed.project["version"]
    assert row["hooks"] == ["register_templates"]
    assert row["provides"] == {"templates": [TEMPLATE]}


def test_disabled_plugin_registers_nothing(installed: Installed) -> None:
    name = installed.control_plugin
    row = control_plane_plugins(installed, SERVERFLOW_DISABLED_PLUGINS=name)[name]
    assert row["status"] == "disabled"
    assert row["provides"] == {}


def test_agent_lists_the_action(installed: Installed) -> None:
    code = "from serverflow_agent.cli import main; import sys; sys.exit(main())"
    listing = json.loads(python(installed, code, "actions", "--json"))
    failed = {p["name"]: p["error"] for p in listing["failed_plugins"]}
    assert installed.agent_plugin not in failed, failed
    actions = {a["name"]: a for a in listing["actions"]}
    assert ACTION in actions, sorted(actions)
    assert actions[ACTION]["plugin"] == installed.agent_plugin
    assert actions[ACTION]["kind"] == "read"


def test_template_renders_and_handler_runs(installed: Installed) -> None:
    code = """
import importlib, json, sys
from serverflow.plugins import Plugins
from serverflow_agent.plugins import AgentPlugins

template = Plugins().registries["templates"].get(sys.argv[1])
spec = AgentPlugins().actions.get(sys.argv[2])
module, _, function = spec.handler.partition(":")
handler = getattr(importlib.import_module(module), function)
print(json.dumps({
    "custom": template.render({"greeting": "Hi <there>", "port": 9000}),
    "defaults": template.render({}),
    "handler": spec.handler,
    "result": handler({"name": "Ada"}),
}))
"""
    out = json.loads(python(installed, code, TEMPLATE, ACTION))
    custom, defaults = out["custom"], out["defaults"]
    assert custom["files"]["index.html"] == "<h1>Hi &lt;there&gt;, world!</h1>\n"
    assert custom["port"] == 9000
    assert custom["start_command"][-1] == "9000"
    assert defaults["files"]["index.html"] == "<h1>Hello, world!</h1>\n"
    assert defaults["port"] == 8080
    assert out["handler"] == HANDLER
    assert out["result"]["message"].startswith("Hello, Ada, from ")


def test_plugin_own_tests_pass(installed: Installed) -> None:
    tests = installed.root / DISTRIBUTION / "tests"
    proc = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        installed.env,
        installed.root,
    )
    assert re.search(r"\b3 passed\b", proc.stdout), proc.stdout
