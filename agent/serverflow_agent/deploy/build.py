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
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from serverflow_agent import spawn
from serverflow_agent.deploy.desired import DeployError
from serverflow_agent.deploy.detect import NODE_LOCKFILES, Plan

Emit = Callable[[str], None]
NPM_INSTALLS = {("npm", "ci"), ("npm", "install"), ("npm", "i")}
COMPLETE = ".complete"
EXPLAIN_MAX = 300
_PIP_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_PIP_PYTHON = re.compile(
    r"Ignored the following versions that require a different python version: (.*)"
)
_REQUIRES = re.compile(r"([0-9][^ ;]*) Requires-Python ([^;]+)")
# npm's lines around the reason, which say nothing by themselves.
_BOILERPLATE = re.compile(
    r"^npm (?:ERR!|error)(?: (?:code|errno|syscall|path|A complete log|Log files)\b.*)?$"
)
_ERROR_LINE = re.compile(
    r"^(?:ERROR:|error:|Error:|npm ERR!|npm error|fatal:|[A-Za-z]*Error\b|\S+Exception\b)"
)


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
        self.python_version: str | None = None  # "3.11.7 (from .python-version: 3.11)"
        self.requirements = "the app"  # what pip installs from, for failure reasons

    def build(self, plan: Plan) -> None:
        if plan.python_env == "requirements":
            self.python_requirements()
        elif plan.python_env == "project":
            self.python_project()
        for step in plan.build:
            if tuple(step[:2]) in NPM_INSTALLS and self._lockfile() is not None:
                self.node_modules(step)
            else:
                self.run(step)

    # -- running one command --------------------------------------------------------

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeployError("the deploy ran out of time during the build")
        return left

    def run(self, argv: Sequence[str], cwd: Path | None = None, what: str | None = None) -> None:
        self.emit(f"$ {' '.join(argv)}")
        what = what or f"the build step `{short(argv)}`"
        try:
            result = spawn.stream(
                argv,
                env=self.env,
                cwd=cwd or self.release,
                timeout=self._timeout(),
                on_line=self.emit,
            )
        except spawn.CommandNotFound as exc:
            raise DeployError(f"{what}: {exc}") from exc
        except spawn.CommandTimeout as exc:
            raise DeployError(f"{what} timed out: {exc}") from exc
        if not result.ok:
            why = explain(result.tail, self.python_version, self.requirements)
            raise DeployError(
                f"{what} failed (exit status {result.returncode})" + (f": {why}" if why else ""),
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
        key = _digest(b"node", node.encode(), lockfile.read_bytes(), " ".join(step).encode())
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
        self.requirements = "requirements.txt"
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
        self.requirements = "pyproject.toml"
        venv = self.release / ".venv"
        _remove(venv)
        self.run([self.python, "-m", "venv", str(venv)])
        self.pip_install(venv, ".")

    def pip_install(self, venv: Path, *what: str) -> None:
        quiet = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
        shown = " ".join(Path(w).name if os.path.isabs(w) else w for w in what)
        self.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", *quiet, *what],
            what=f"`pip install {shown}`",
        )

    # -- framework conventions -------------------------------------------------------

    def django_static(self) -> tuple[tuple[str, str], ...]:
        """Django: `collectstatic` (as Heroku's Python buildpack does), and where the files
        went, for nginx to serve them. Skipped with DISABLE_COLLECTSTATIC=1."""
        if not (self.release / "manage.py").is_file():
            return ()
        if self.env.get("DISABLE_COLLECTSTATIC", "").strip() not in ("", "0", "false"):
            self.emit("Django: collectstatic skipped (DISABLE_COLLECTSTATIC is set)")
            return ()
        if not _mentions(self.release, "STATIC_ROOT"):
            self.emit("Django: no STATIC_ROOT in the settings, collectstatic skipped")
            return ()
        python = str(self.release / ".venv" / "bin" / "python")
        if not os.access(python, os.X_OK):
            python = self.python
        self.run(
            [python, "manage.py", "collectstatic", "--noinput"],
            what="Django's collectstatic (set DISABLE_COLLECTSTATIC=1 to skip it)",
        )
        script = (
            "import json; from django.conf import settings; "
            "print(json.dumps([settings.STATIC_URL, str(settings.STATIC_ROOT or '')]))"
        )
        try:
            result = spawn.capture(
                [python, "manage.py", "shell", "-c", script],
                env=self.env,
                cwd=self.release,
                timeout=min(60.0, self._timeout()),
            )
            url, root = json.loads(result.stdout.strip().splitlines()[-1])
        except (spawn.CommandNotFound, spawn.CommandTimeout, ValueError, IndexError):
            self.emit("Django: STATIC_URL and STATIC_ROOT could not be read; the app serves them")
            return ()
        root_path = Path(root).resolve() if root else None
        inside = root_path is not None and root_path.is_relative_to(self.release.resolve())
        if not (
            isinstance(url, str)
            and url.startswith("/")
            and root_path is not None
            and inside
            and root_path.is_dir()
        ):
            self.emit(f"Django: static files at {url} stay with the app (STATIC_ROOT {root!r})")
            return ()
        prefix = url if url.endswith("/") else url + "/"
        self.emit(f"Django: nginx serves {prefix} from {root_path}")
        return ((prefix, str(root_path)),)


def short(argv: Sequence[str]) -> str:
    """A command as a person reads it: the program's name, not its path, and at most a few
    words (the full line is in the log just above)."""
    words = [Path(argv[0]).name, *argv[1:]]
    if words[0].startswith("python") and words[1:3] == ["-m", "pip"]:
        words = ["pip", *[w for w in words[3:] if not w.startswith("-") or w == "-r"]]
    text = " ".join(words)
    return text if len(text) <= 80 else text[:77] + "..."


def explain(
    tail: Sequence[str], python_version: str | None = None, requirements: str = "the app"
) -> str:
    """The cause of a failed command, in one sentence, from its last output lines."""
    lines = [line.strip() for line in tail if line.strip()]
    missing = next((m for line in lines if (m := _PIP_NO_MATCH.search(line))), None)
    if missing is not None:
        wanted = missing.group(1)
        needs = next((m.group(1) for line in lines if (m := _PIP_PYTHON.search(line))), None)
        if needs:
            pins = _REQUIRES.findall(needs)
            newest = pins[-1] if pins else None
            if newest is not None:
                have = f"; the server's Python is {python_version}" if python_version else ""
                return (
                    f"{requirements} needs {wanted}, which needs Python {newest[1].strip()} "
                    f"(version {newest[0]}){have}"
                )[:EXPLAIN_MAX]
        return f"{requirements} needs {wanted}, which pip cannot find"[:EXPLAIN_MAX]
    for line in reversed(lines):
        if _ERROR_LINE.match(line) and not _BOILERPLATE.search(line):
            return line[:EXPLAIN_MAX]
    return lines[-1][:EXPLAIN_MAX] if lines else ""


def _mentions(release: Path, word: str) -> bool:
    """Whether a Python file of the app (not its virtualenv) mentions `word`."""
    for root, dirs, files in os.walk(release):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "venv")]
        if len(Path(root).relative_to(release).parts) > 3:
            dirs[:] = []
        for name in files:
            if name.endswith(".py"):
                try:
                    if word in (Path(root) / name).read_text(errors="replace"):
                        return True
                except OSError:
                    continue
    return False


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
