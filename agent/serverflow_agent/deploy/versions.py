"""The interpreter versions a repository asks for, found on the server before any build.

- Python: `.python-version` (pyenv's file; its first line), else `runtime.txt`
  (`python-3.12.4`, Heroku's). A request names a major.minor (`3.12`) or an exact version
  (`3.12.4`). Candidates, in order: the configured Python (`deploy.python`),
  `python3.X` on PATH, pyenv's installed versions, then `uv` (on PATH) finding or
  installing it.
- Node.js: `engines.node` of package.json (an npm range: `>=18`, `20.x`, `^20.11`), else
  `.nvmrc` / `.node-version` (`20`, `v20.11.0`; aliases such as `lts/*` are not checked).
  Only the `node` on PATH is a candidate (no version manager is used).

Nothing asked for: the server's default, as before. Asked for and not found: DeployError
naming the file, the version asked for and what the server has, before anything is built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from serverflow_agent import spawn
from serverflow_agent.deploy.desired import DeployError

Emit = Callable[[str], None]
_PYTHON_REQUEST = re.compile(r"(?:c?python-?)?(\d+\.\d+(?:\.\d+)?)", re.IGNORECASE)
_NODE_EXACT = re.compile(r"v?(\d+(?:\.\d+){0,2})")
VERSION_SCRIPT = "import sys; print('.'.join(map(str, sys.version_info[:3])))"
UV_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Interpreter:
    program: str  # absolute path, or the configured command
    version: str  # "3.11.7"
    source: str | None = None  # ".python-version: 3.11"; None: nothing was asked for

    def describe(self, language: str) -> str:
        asked = f" (from {self.source})" if self.source else " (the server's default)"
        return f"{language} {self.version}{asked}"


def _first_line(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace")[:4096]
    except OSError:
        return None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return line
    return None


def python_request(release: Path) -> tuple[str, str] | None:
    """(file, version) the repository pins, or None; DeployError when it cannot be read."""
    for name in (".python-version", "runtime.txt"):
        line = _first_line(release / name)
        if line is None:
            continue
        match = _PYTHON_REQUEST.fullmatch(line)
        if match is None:
            raise DeployError(
                f"{name} says {line[:80]!r}, which is not a CPython version such as 3.12 or "
                "3.12.4 (write one, or delete the file to use the server's Python)"
            )
        return name, match.group(1)
    return None


def _matches(version: str, request: str) -> bool:
    return version.split(".")[: len(request.split("."))] == request.split(".")


def _version_of(program: str, env: Mapping[str, str]) -> str | None:
    try:
        result = spawn.capture([program, "-c", VERSION_SCRIPT], env=env, timeout=30)
    except (spawn.CommandNotFound, spawn.CommandTimeout):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _python_candidates(default: str, request: str, env: Mapping[str, str]) -> list[str]:
    """Pythons to try, the likeliest first; all of them, so a failure can say what the
    server has."""
    major_minor = ".".join(request.split(".")[:2])
    path = env.get("PATH")
    found = [shutil.which(default, path=path) or default]
    for name in (f"python{major_minor}", "python3"):
        program = shutil.which(name, path=path)
        if program:
            found.append(program)
    pyenv = Path(env.get("PYENV_ROOT") or Path(env.get("HOME", "/root")) / ".pyenv")
    versions = pyenv / "versions"
    if versions.is_dir():
        installed = [entry for entry in versions.iterdir() if (entry / "bin" / "python3").is_file()]
        installed.sort(key=lambda entry: (not _matches(entry.name, request), entry.name))
        found += [str(entry / "bin" / "python3") for entry in installed]
    return list(dict.fromkeys(found))


def python(
    release: Path,
    default: str,
    env: Mapping[str, str],
    emit: Emit,
    timeout: float = UV_TIMEOUT_S,
) -> Interpreter:
    """The Python to build the release's virtualenv with."""
    asked = python_request(release)
    if asked is None:
        version = _version_of(default, env)
        if version is None:
            raise DeployError(f"the server's Python ({default}) does not run")
        return Interpreter(default, version)
    name, request = asked
    source = f"{name}: {request}"
    seen: list[str] = []
    for program in _python_candidates(default, request, env):
        version = _version_of(program, env)
        if version is None:
            continue
        if _matches(version, request):
            return Interpreter(program, version, source)
        seen.append(f"{version} ({program})")
    has = ", ".join(dict.fromkeys(seen)) or "no working Python"
    uv = shutil.which("uv", path=env.get("PATH"))
    if uv is None:
        raise DeployError(
            f"{name} asks for Python {request}; the server has {has} and no uv to install "
            f"another: install Python {request} (or uv) on the server, or change {name}"
        )
    emit(f"{name} asks for Python {request}; the server has {has}: asking uv for it")
    found = _uv_find(uv, request, env)
    if found is None:
        try:
            result = spawn.stream(
                [uv, "python", "install", request], env=env, timeout=timeout, on_line=emit
            )
        except (spawn.CommandNotFound, spawn.CommandTimeout) as exc:
            raise DeployError(f"uv could not install Python {request}: {exc}") from exc
        if not result.ok:
            why = next((line for line in reversed(result.tail) if line.strip()), "")
            raise DeployError(
                f"{name} asks for Python {request}; the server has {has}, and uv could not "
                f"install it: {why.strip()[:300]}"
            )
        found = _uv_find(uv, request, env)
    version = _version_of(found, env) if found else None
    if found is None or version is None:
        raise DeployError(f"uv installed Python {request} but cannot find it afterwards")
    return Interpreter(found, version, source)


def _uv_find(uv: str, request: str, env: Mapping[str, str]) -> str | None:
    try:
        result = spawn.capture([uv, "python", "find", request], env=env, timeout=60)
    except (spawn.CommandNotFound, spawn.CommandTimeout):
        return None
    path = result.stdout.strip()
    return path if result.returncode == 0 and path and os.path.isabs(path) else None


def node_request(release: Path) -> tuple[str, str] | None:
    """(where, range) the repository asks of Node.js, or None."""
    try:
        package = json.loads((release / "package.json").read_text())
    except (OSError, ValueError):
        package = None
    if isinstance(package, dict):
        engines = package.get("engines")
        if isinstance(engines, dict) and isinstance(engines.get("node"), str):
            wanted = engines["node"].strip()
            if wanted and wanted != "*":
                return "package.json engines.node", wanted
    for name in (".nvmrc", ".node-version"):
        line = _first_line(release / name)
        if line:
            return name, line
    return None


def node(release: Path, env: Mapping[str, str]) -> Interpreter | None:
    """The Node.js on PATH, checked against what the repository asks; None if no ask."""
    asked = node_request(release)
    if asked is None:
        return None
    import semantic_version  # only deploys of Node apps that pin a version need it

    where, wanted = asked
    source = f"{where}: {wanted}"
    exact = _NODE_EXACT.fullmatch(wanted)
    try:
        spec = semantic_version.NpmSpec(exact.group(1) if exact else wanted)
    except ValueError:
        if where == "package.json engines.node":
            raise DeployError(
                f"{source} is not an npm version range (such as >=18, 20.x or ^20.11)"
            ) from None
        return Interpreter("node", "unchecked", f"{source}, an alias: not checked")
    try:
        result = spawn.capture(["node", "--version"], env=env, timeout=30)
    except (spawn.CommandNotFound, spawn.CommandTimeout):
        raise DeployError(f"{where} asks for Node.js {wanted}; the server has no node") from None
    have = result.stdout.strip().lstrip("v")
    try:
        ok = spec.match(semantic_version.Version.coerce(have))
    except ValueError:
        ok = False
    if not ok:
        raise DeployError(
            f"{where} asks for Node.js {wanted}; the server has Node.js {have}: install a "
            f"matching Node.js on the server, or change {where}"
        )
    return Interpreter("node", have, source)
