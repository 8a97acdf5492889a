"""How to build and start a release when the app entry does not say (docs/deploys.md)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_agent.deploy.desired import DeployError

DOCKERFILE_ERROR = "this app has a Dockerfile; deploy it with the Docker runtime"
NODE_LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")

Argv = tuple[str, ...]
_SHELL_CHARS = set("&|;<>()$`\\\"'*?[]{}~#!\n\t")


@dataclass(frozen=True)
class Plan:
    kind: str  # node | python | static | command
    build: tuple[Argv, ...] = ()
    start: Argv | None = None  # None: nothing runs, the proxy serves the release directory
    python_env: str | None = None  # "requirements" | "project": make .venv and install

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "build": [list(step) for step in self.build],
            "start": list(self.start) if self.start is not None else None,
            "python_env": self.python_env,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        start = data.get("start")
        return cls(
            kind=str(data["kind"]),
            build=tuple(tuple(step) for step in data.get("build") or ()),
            start=tuple(start) if start is not None else None,
            python_env=data.get("python_env"),
        )


def _package_json(release: Path) -> dict[str, Any]:
    try:
        data = json.loads((release / "package.json").read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"package.json cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise DeployError("package.json must hold a JSON object")
    return data


def _scripts(package: dict[str, Any]) -> dict[str, Any]:
    scripts = package.get("scripts")
    return scripts if isinstance(scripts, dict) else {}


def _node_build(release: Path, package: dict[str, Any]) -> tuple[Argv, ...]:
    has_lock = any((release / name).is_file() for name in NODE_LOCKFILES)
    steps: list[Argv] = [("npm", "ci") if has_lock else ("npm", "install")]
    if "build" in _scripts(package):
        steps.append(("npm", "run", "build"))
    return tuple(steps)


def _plain_command(script: Any) -> Argv | None:
    """A start script that is a plain command ("node server.js"), as an argv; None when a
    shell is needed for it (operators, quotes, variables, an env assignment)."""
    if not isinstance(script, str) or set(script) & _SHELL_CHARS:
        return None
    argv = tuple(script.split())
    if not argv or "=" in argv[0]:
        return None
    return argv


def _node_start(release: Path, package: dict[str, Any]) -> Argv:
    scripts = _scripts(package)
    if "start" in scripts:
        # What `npm start` would run, without npm (and its shell) between PM2 and the app:
        # PM2 then supervises the app's own process, and a crash restarts the right thing.
        return _plain_command(scripts["start"]) or ("npm", "start")
    main = package.get("main")
    candidates = [main] if isinstance(main, str) and main else []
    for name in [*candidates, "server.js", "index.js"]:
        if (release / name).is_file():
            return ("node", name)
    raise DeployError(
        "set a start command: package.json has no start script, and there is no "
        "main file, server.js or index.js"
    )


def procfile_web(release: Path) -> Argv | None:
    """The `web:` line of a Procfile, split like a shell would (but never run by one)."""
    path = release / "Procfile"
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == "web" and command.strip():
            try:
                argv = tuple(shlex.split(command))
            except ValueError as exc:
                raise DeployError(f"the Procfile web: line cannot be split: {exc}") from exc
            if argv:
                return argv
    return None


def detect(release: Path, build: tuple[Argv, ...] | None, start: Argv | None) -> Plan:
    """The plan for a release: the entry's own commands where given, detected otherwise."""
    has = {
        name
        for name in (
            "package.json",
            "requirements.txt",
            "pyproject.toml",
            "index.html",
            "Dockerfile",
        )
        if (release / name).is_file()
    }
    if "package.json" in has:
        package = _package_json(release)
        return Plan(
            "node",
            build if build is not None else _node_build(release, package),
            start if start is not None else _node_start(release, package),
        )
    if "requirements.txt" in has or "pyproject.toml" in has:
        python_env = None
        if build is None:
            python_env = "requirements" if "requirements.txt" in has else "project"
        start = start or procfile_web(release)
        if start is None:
            raise DeployError(
                "set a start command: this Python app has none (and no Procfile web: line)"
            )
        return Plan("python", build or (), start, python_env)
    if start is not None:
        return Plan("command", build or (), start)
    if "index.html" in has:
        return Plan("static", build or (), None)
    if "Dockerfile" in has:
        raise DeployError(DOCKERFILE_ERROR)
    raise DeployError(
        "cannot tell how to build and start this app: no package.json, requirements.txt, "
        "pyproject.toml or index.html; set build and start commands"
    )
