"""Local git repositories with real commits and branches, for deploy tests.

`GitRepo(path)` is a normal (non-bare) repository the agent can clone by its path.
`commit(...)` replaces the whole tree with a directory's files (plus overrides), so a
test can move one repository from "the Node app, v1" to "v2" to "a broken app".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from serverflow_testkit import missing

# Tiny apps shipped with the kit (node, node_crash, node_unhealthy, python, static, docker).
APPS = Path(__file__).resolve().parent / "apps"
_ENV = {
    "GIT_AUTHOR_NAME": "ServerFlow Tests",
    "GIT_AUTHOR_EMAIL": "tests@serverflow.invalid",
    "GIT_COMMITTER_NAME": "ServerFlow Tests",
    "GIT_COMMITTER_EMAIL": "tests@serverflow.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def require_git() -> None:
    if shutil.which("git") is None:
        missing("git", "the git binary is not installed (apt-get install git)")


class GitRepo:
    def __init__(self, path: Path, branch: str = "main") -> None:
        require_git()
        self.path = path
        self.branch = branch
        path.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", branch)

    @property
    def url(self) -> str:
        return str(self.path)

    def _git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env={**os.environ, **_ENV},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip()

    def commit(
        self,
        app: str | Path | None = None,
        files: Mapping[str, str | bytes | None] | None = None,
        message: str = "commit",
        branch: str | None = None,
    ) -> str:
        """Commit the files of `app` (a name in APPS or a directory) with `files`
        written over them (None deletes); returns the new commit's SHA."""
        if branch is not None and branch != self.current_branch():
            self._git("checkout", "-q", branch)
        if app is not None:
            for child in self.path.iterdir():
                if child.name == ".git":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            source = app if isinstance(app, Path) else APPS / app
            shutil.copytree(source, self.path, dirs_exist_ok=True)
        for name, content in (files or {}).items():
            target = self.path / name
            if content is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        self._git("add", "-A")
        self._git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return self._git("rev-parse", ref)

    def current_branch(self) -> str:
        return self._git("rev-parse", "--abbrev-ref", "HEAD")

    def create_branch(self, name: str, start: str = "HEAD") -> None:
        self._git("branch", name, start)
