"""Git on the server: resolving a branch, a bare mirror per app, exporting one commit.

Every call is an argv with `--` before user-controlled operands, a timeout, no terminal
prompt, and only the file/git/http(s)/ssh transports (serverflow_agent.deploy.environment).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serverflow_agent import spawn
from serverflow_agent.deploy.desired import (
    DeployError,
    check_branch,
    check_commit,
    check_repo,
    redact,
    scrub,
)
from serverflow_agent.deploy.environment import git_env

LS_REMOTE_TIMEOUT_S = 60.0
FETCH_TIMEOUT_S = 600.0
LOCAL_TIMEOUT_S = 120.0

Emit = Callable[[str], None]


def _git(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return spawn.capture(["git", *args], env=git_env(), timeout=timeout)
    except spawn.CommandNotFound as exc:
        raise DeployError("git is not installed on this server") from exc
    except spawn.CommandTimeout as exc:
        command = next((a for a in args if not a.startswith("-")), "")
        raise DeployError(f"git {command} did not finish within {timeout:g} s") from exc


def _why(result: subprocess.CompletedProcess[str], repo: str) -> str:
    """git's own explanation (its first `fatal:`/`error:` line, else its last line),
    without the credentials the repository URL may hold."""
    lines = [line.strip() for line in scrub(result.stderr, repo).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line.split(":", 1)[1].strip()[:500]
    return lines[-1][:500] if lines else f"git exited with status {result.returncode}"


def ls_remote(repo: str, branch: str) -> str:
    """The commit `branch` points to in `repo` (git ls-remote, on this server)."""
    check_repo(repo)
    check_branch(branch)
    ref = f"refs/heads/{branch}"
    result = _git(["ls-remote", "--exit-code", "--", repo, ref], LS_REMOTE_TIMEOUT_S)
    if result.returncode == 2:
        raise DeployError(f"branch {branch!r} does not exist in {redact(repo)}")
    if result.returncode != 0:
        raise DeployError(f"cannot read the repository {redact(repo)}: {_why(result, repo)}")
    for line in result.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return check_commit(sha)
    raise DeployError(f"branch {branch!r} does not exist in {redact(repo)}")


def default_branch(repo: str) -> tuple[str, str]:
    """The branch the remote's HEAD names, and its commit (`git ls-remote --symref`)."""
    check_repo(repo)
    result = _git(["ls-remote", "--symref", "--", repo, "HEAD"], LS_REMOTE_TIMEOUT_S)
    if result.returncode != 0:
        raise DeployError(f"cannot read the repository {redact(repo)}: {_why(result, repo)}")
    branch = commit = None
    for line in result.stdout.splitlines():
        head, _, name = line.partition("\t")
        if name != "HEAD":
            continue
        if head.startswith("ref: refs/heads/"):
            branch = head[len("ref: refs/heads/") :]
        elif not head.startswith("ref:"):
            commit = head
    if commit is None:
        raise DeployError(f"the repository {redact(repo)} has no commits yet")
    if branch is None:
        raise DeployError(
            f"the HEAD of {redact(repo)} names no branch, so it has no default branch: "
            "give the app a branch"
        )
    return check_branch(branch), check_commit(commit)


def resolve(params: dict[str, Any]) -> dict[str, Any]:
    """Action `git.resolve`: {repo, branch?} -> {branch, ref, commit}; without a branch,
    the repository's default branch."""
    try:
        branch = params.get("branch")
        if branch is None:
            branch, commit = default_branch(params["repo"])
        else:
            commit = ls_remote(params["repo"], branch)
    except DeployError as exc:
        # The runner reports an exception's text as the error message: keep it readable.
        raise GitError(exc.reason) from None
    return {"branch": branch, "ref": f"refs/heads/{branch}", "commit": commit}


class GitError(Exception):
    """Raised by the git.resolve action; its message is the whole explanation."""


def has_commit(mirror: Path, commit: str) -> bool:
    if not (mirror / "HEAD").exists():
        return False
    result = _git([f"--git-dir={mirror}", "cat-file", "-e", f"{commit}^{{commit}}"], 30)
    return result.returncode == 0


def sync(repo: str, mirror: Path, commit: str, emit: Emit, timeout: float) -> None:
    """Make sure the bare mirror of `repo` at `mirror` holds `commit`."""
    check_repo(repo)
    check_commit(commit)
    if (mirror / "HEAD").exists():
        origin = _git([f"--git-dir={mirror}", "config", "--get", "remote.origin.url"], 30)
        if origin.stdout.strip() != repo:
            emit("the repository URL changed: cloning it again")
            shutil.rmtree(mirror)
    if has_commit(mirror, commit):
        emit(f"commit {commit[:12]} is already in the local mirror")
        return
    timeout = min(timeout, FETCH_TIMEOUT_S)
    if not (mirror / "HEAD").exists():
        emit(f"cloning {redact(repo)}")
        partial = mirror.with_name(f".{mirror.name}.{os.getpid()}.tmp")
        shutil.rmtree(partial, ignore_errors=True)
        result = _git(["clone", "--mirror", "--quiet", "--", repo, str(partial)], timeout)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise DeployError(f"cannot clone {redact(repo)}: {_why(result, repo)}")
        os.replace(partial, mirror)
    else:
        emit(f"fetching {redact(repo)}")
        result = _git([f"--git-dir={mirror}", "fetch", "--prune", "--quiet", "origin"], timeout)
        if result.returncode != 0:
            raise DeployError(f"cannot fetch {redact(repo)}: {_why(result, repo)}")
    if not has_commit(mirror, commit):
        # Not on any branch or tag any more (force-pushed away?): ask for it by name.
        _git([f"--git-dir={mirror}", "fetch", "--quiet", "origin", commit], timeout)
    if not has_commit(mirror, commit):
        raise DeployError(f"commit {commit} does not exist in {redact(repo)}")


def export(mirror: Path, commit: str, dest: Path) -> None:
    """Write the files of `commit` into the (new) directory `dest`; no .git in it."""
    check_commit(commit)
    archive = dest.with_name(f".{dest.name}.{os.getpid()}.tar")
    try:
        result = _git(
            [f"--git-dir={mirror}", "archive", "--format=tar", "-o", str(archive), commit],
            LOCAL_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise DeployError(f"cannot check out {commit[:12]}: {_why(result, '')}")
        dest.mkdir(mode=0o755)
        try:
            with tarfile.open(archive) as tar:
                # The "data" filter refuses absolute paths, "..", and links leading out.
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise DeployError(f"cannot check out {commit[:12]}: {exc}") from exc
    finally:
        archive.unlink(missing_ok=True)
