"""Running a release's build, with dependency caches keyed by the lockfile.

- Node: after `npm ci` / `npm install` with a lockfile, node_modules moves to
  cache/node/<sha256 of lockfile + node version>/node_modules and the release gets a
  symlink to it; the next release with the same lockfile gets the symlink without
  running npm at all.
- Python (requirements.txt): the virtualenv is built once at
  cache/python/<sha256 of requirements + python version>/venv (virtualenvs cannot move)
  and the release's .venv is a symlink to it. A pyproject.toml-only app installs itself
  (`pip install .`), so its .venv is built in each release.

A cache entry counts only once its `.complete` marker exists: an interrupted build is
redone, never half-used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from serverflow_agent import spawn
from serverflow_agent.deploy.desired import DeployError
from serverflow_agent.deploy.detect import NODE_LOCKFILES, Plan

Emit = Callable[[str], None]
NPM_INSTALL_STEPS = {("npm", "ci"), ("npm", "install"), ("npm", "i")}
COMPLETE = ".complete"


class Builder:
    def __init__(
        self,
        release: Path,
        env: Mapping[str, str],
        cache_dir: Path,
        python: str,
        emit: Emit,
        deadline: float,
    ) -> None:
        self.release = release
        self.env = dict(env)
        self.cache_dir = cache_dir
        self.python = python
        self.emit = emit
        self.deadline = deadline

    def build(self, plan: Plan) -> None:
        if plan.python_env == "requirements":
            self.python_requirements()
        elif plan.python_env == "project":
            self.python_project()
        for step in plan.build:
            if tuple(step) in NPM_INSTALL_STEPS and self._lockfile() is not None:
                self.node_modules(step)
            else:
                self.run(step)

    # -- running one command --------------------------------------------------------

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeployError("the deploy ran out of time during the build")
        return left

    def run(self, argv: Sequence[str], cwd: Path | None = None) -> None:
        shown = " ".join(argv)
        self.emit(f"$ {shown}")
        try:
            result = spawn.stream(
                argv,
                env=self.env,
                cwd=cwd or self.release,
                timeout=self._timeout(),
                on_line=self.emit,
            )
        except spawn.CommandNotFound as exc:
            raise DeployError(f"build step `{shown[:200]}`: {exc}") from exc
        except spawn.CommandTimeout as exc:
            raise DeployError(f"build step `{shown[:200]}` timed out: {exc}") from exc
        if not result.ok:
            raise DeployError(
                f"build step `{shown[:200]}` failed (exit status {result.returncode})",
                result.tail,
            )

    def _output(self, argv: Sequence[str]) -> str:
        try:
            result = spawn.capture(argv, env=self.env, timeout=min(60.0, self._timeout()))
        except (spawn.CommandNotFound, spawn.CommandTimeout) as exc:
            raise DeployError(str(exc)) from exc
        if result.returncode != 0:
            raise DeployError(f"`{' '.join(argv)}` failed: {result.stderr.strip()[-300:]}")
        return result.stdout.strip()

    # -- node ------------------------------------------------------------------------

    def _lockfile(self) -> Path | None:
        return next(
            (self.release / n for n in NODE_LOCKFILES if (self.release / n).is_file()), None
        )

    def node_modules(self, step: Sequence[str]) -> None:
        lockfile = self._lockfile()
        assert lockfile is not None
        node = self._output(["node", "--version"])
        key = _digest(b"node", node.encode(), lockfile.read_bytes())
        entry = self.cache_dir / "node" / key
        target = self.release / "node_modules"
        if (entry / COMPLETE).exists():
            self.emit(f"node_modules from the cache ({lockfile.name} unchanged): npm skipped")
            _remove(target)
            os.symlink(entry / "node_modules", target)
            return
        self.run(step)
        if not target.is_dir() or target.is_symlink():
            return
        _remove(entry)
        entry.mkdir(parents=True)
        try:
            os.replace(target, entry / "node_modules")
        except OSError as exc:  # another file system: keep this release's own copy
            self.emit(f"node_modules not cached: {exc}")
            shutil.rmtree(entry, ignore_errors=True)
            return
        os.symlink(entry / "node_modules", target)
        (entry / COMPLETE).touch()
        self.emit(f"node_modules cached for this {lockfile.name}")

    # -- python ----------------------------------------------------------------------

    def python_requirements(self) -> None:
        requirements = (self.release / "requirements.txt").read_bytes()
        version = self._output([self.python, "-c", "import sys; print(sys.version)"])
        key = _digest(b"python", version.encode(), requirements)
        entry = self.cache_dir / "python" / key
        venv = entry / "venv"
        target = self.release / ".venv"
        if (entry / COMPLETE).exists():
            self.emit("virtualenv from the cache (requirements.txt unchanged): pip skipped")
        else:
            _remove(entry)
            entry.mkdir(parents=True)
            self.run([self.python, "-m", "venv", str(venv)])
            self.pip_install(venv, "-r", str(self.release / "requirements.txt"))
            (entry / COMPLETE).touch()
            self.emit("virtualenv cached for this requirements.txt")
        _remove(target)
        os.symlink(venv, target)

    def python_project(self) -> None:
        venv = self.release / ".venv"
        _remove(venv)
        self.run([self.python, "-m", "venv", str(venv)])
        self.pip_install(venv, ".")

    def pip_install(self, venv: Path, *what: str) -> None:
        quiet = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
        self.run([str(venv / "bin" / "python"), "-m", "pip", "install", *quiet, *what])


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
