"""How to build and start a release when the app entry does not say (docs/deploys.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_agent.deploy import procfile
from serverflow_agent.deploy.desired import DeployError
from serverflow_contract import naming

DOCKERFILE_ERROR = "this app has a Dockerfile; deploy it with the Docker runtime"
NODE_LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")

Argv = tuple[str, ...]
_SHELL_CHARS = set("&|;<>()$`\\\"'*?[]{}~#!\n\t")


@dataclass(frozen=True)
class Plan:
    """How a release is built and run, decided once per build (kept in its build marker).

    `start` is the web process (None: nothing serves HTTP; the proxy serves the release
    directory if the app has domains and no other process). `processes` are the other
    Procfile types, `release` the Procfile's release command; both are argvs with
    `$VARIABLES` still to fill in. `notes` say where each decision came from.
    """

    kind: str  # node | python | static | command | processes
    build: tuple[Argv, ...] = ()
    start: Argv | None = None
    python_env: str | None = None  # "requirements" | "project": make .venv and install
    processes: tuple[tuple[str, Argv], ...] = ()
    release: Argv | None = None
    notes: tuple[str, ...] = ()
    versions: tuple[tuple[str, str], ...] = ()  # (language, what was asked and found)
    static: tuple[tuple[str, str], ...] = ()  # (URL prefix, directory) nginx serves itself

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "build": [list(step) for step in self.build],
            "start": list(self.start) if self.start is not None else None,
            "python_env": self.python_env,
            "processes": [[kind, list(argv)] for kind, argv in self.processes],
            "release": list(self.release) if self.release is not None else None,
            "notes": list(self.notes),
            "versions": [list(v) for v in self.versions],
            "static": [list(s) for s in self.static],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        start, release = data.get("start"), data.get("release")
        return cls(
            kind=str(data["kind"]),
            build=tuple(tuple(step) for step in data.get("build") or ()),
            start=tuple(start) if start is not None else None,
            python_env=data.get("python_env"),
            processes=tuple((str(k), tuple(a)) for k, a in data.get("processes") or ()),
            release=tuple(release) if release is not None else None,
            notes=tuple(data.get("notes") or ()),
            versions=tuple((str(a), str(b)) for a, b in data.get("versions") or ()),
            static=tuple((str(a), str(b)) for a, b in data.get("static") or ()),
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
    """`npm ci` (or `npm install` without a lockfile); with a build script, as Heroku's
    buildpack does: dependencies including dev ones, the build, then only production
    dependencies (NODE_ENV=production makes a plain `npm ci` leave dev ones out)."""
    install: Argv = ("npm", "ci") if _lockfile(release) else ("npm", "install")
    if "build" not in _scripts(package):
        return (install,)
    return ((*install, "--include=dev"), ("npm", "run", "build"), (*install, "--omit=dev"))


def _lockfile(release: Path) -> bool:
    return any((release / name).is_file() for name in NODE_LOCKFILES)


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


def _procfile_start(
    commands: dict[str, procfile.Command], start: Argv | None, detected: str | None
) -> tuple[Argv | None, str | None]:
    """The web process (argv, note): the app's own start setting, else the Procfile's web:
    line, else what detection found (given by the caller); the note says what won."""
    web = commands.get(naming.WEB)
    if start is not None:
        if web is not None:
            return start, f"start: the app's setting (overrides the Procfile's web: {web.line})"
        return start, None
    if web is not None:
        over = f" (overrides {detected})" if detected else ""
        return web.argv, f"start: the Procfile's web: line{over}"
    return None, None


def detect(release: Path, build: tuple[Argv, ...] | None, start: Argv | None) -> Plan:
    """The plan for a release: the entry's own commands where given, the Procfile's next,
    detected from the files last."""
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
    commands = procfile.read(release)
    others = tuple(
        (kind, command.argv)
        for kind, command in commands.items()
        if kind not in (naming.WEB, naming.RELEASE)
    )
    release_command = commands[naming.RELEASE].argv if naming.RELEASE in commands else None
    notes: list[str] = []
    if others:
        notes.append(
            "processes: " + ", ".join(f"{kind} ({' '.join(argv)})" for kind, argv in others)
        )
    if release_command is not None:
        line = commands[naming.RELEASE].line
        notes.append(f"release command (once per deploy, before the switch): {line}")

    def plan(kind: str, steps: tuple[Argv, ...], web: Argv | None, **more: Any) -> Plan:
        return Plan(
            kind,
            steps,
            web,
            processes=others,
            release=release_command,
            notes=tuple(notes),
            **more,
        )

    if "package.json" in has:
        package = _package_json(release)
        detected: Argv | None = None
        detected_from = None
        try:
            detected = _node_start(release, package)
            script = _scripts(package).get("start")
            detected_from = (
                f"package.json's start script `{script}`"
                if isinstance(script, str)
                else f"`{' '.join(detected)}`"
            )
        except DeployError:
            if start is None and naming.WEB not in commands and not others:
                raise
        web, note = _procfile_start(commands, start, detected_from)
        if note:
            notes.append(note)
        return plan(
            "node",
            build if build is not None else _node_build(release, package),
            web or detected,
        )
    if "requirements.txt" in has or "pyproject.toml" in has:
        python_env = None
        if build is None:
            python_env = "requirements" if "requirements.txt" in has else "project"
        web, note = _procfile_start(commands, start, None)
        if note:
            notes.append(note)
        if web is None and not others:
            raise DeployError(
                "set a start command: this Python app has none (and no Procfile web: line)"
            )
        return plan("python", build or (), web, python_env=python_env)
    web, note = _procfile_start(commands, start, None)
    if note:
        notes.append(note)
    if web is not None:
        return plan("command", build or (), web)
    if "index.html" in has:
        return plan("static", build or (), None)
    if others:
        return plan("processes", build or (), None)
    if "Dockerfile" in has:
        raise DeployError(DOCKERFILE_ERROR)
    raise DeployError(
        "cannot tell how to build and start this app: no package.json, requirements.txt, "
        "pyproject.toml, Procfile or index.html; set build and start commands"
    )
