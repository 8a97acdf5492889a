"""An app's directory on the server (docs/deploys.md, "Layout"):

    <apps_dir>/<app>/repo.git            bare mirror
    <apps_dir>/<app>/releases/<id>/      checked-out files + build output
    <apps_dir>/<app>/meta/<id>.json      written once <id> is built: commit and plan
                                         (or "build": <other id> whose files it reuses)
    <apps_dir>/<app>/current -> releases/<id>
    <apps_dir>/<app>/state.json          what runs now (release, process, port, history)

The build marker lives outside the release directory: a static site's directory is
served as it is. `current` and state.json are replaced with rename(2), so a crash leaves
the old or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_agent.config import fsync_dir
from serverflow_agent.deploy.desired import check_app_name, check_release_id

STATE_VERSION = 1


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    """Replace `path` atomically and durably."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class AppDir:
    apps_dir: Path
    name: str

    def __post_init__(self) -> None:
        check_app_name(self.name)  # it becomes a path: never "..", "/" or "-x"

    @property
    def root(self) -> Path:
        return self.apps_dir / self.name

    @property
    def mirror(self) -> Path:
        return self.root / "repo.git"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def release(self, release_id: str) -> Path:
        return self.releases / check_release_id(release_id)

    def create(self) -> None:
        for path in (self.root, self.releases, self.meta):
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(path, 0o755)  # noqa: S103 - nginx workers read static releases

    # -- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any] | None:
        return read_json(self.state_file)

    def save_state(self, state: dict[str, Any]) -> None:
        write_json(self.state_file, {**state, "state_version": STATE_VERSION})

    # -- built releases ------------------------------------------------------------------
    #
    # A release made from a commit that another kept release already built (a config
    # change, a deploy of an earlier commit) gets only a marker whose "build" names that
    # release: both run from the same directory, nothing is fetched or built again.

    def _markers(self) -> dict[str, dict[str, Any]]:
        found = {}
        for path in self.meta.glob("*.json") if self.meta.is_dir() else []:
            marker = read_json(path)
            if marker is not None:
                found[path.stem] = marker
        return found

    @staticmethod
    def _build_of(release_id: str, marker: dict[str, Any]) -> str:
        build = marker.get("build")
        return build if isinstance(build, str) else release_id

    def build_dir(self, release_id: str) -> Path:
        """The directory a release runs from: its own, or the one it reuses."""
        marker = read_json(self.meta / f"{check_release_id(release_id)}.json") or {}
        return self.release(self._build_of(release_id, marker))

    def built(self, release_id: str) -> dict[str, Any] | None:
        """The build marker of a release, if it was built completely."""
        marker = read_json(self.meta / f"{check_release_id(release_id)}.json")
        if marker is None or not self.release(self._build_of(release_id, marker)).is_dir():
            return None
        return marker

    def find_build(self, inputs: str) -> tuple[str, dict[str, Any]] | None:
        """A kept release whose build came from the same inputs (commit, build settings)."""
        for release_id, marker in sorted(self._markers().items()):
            if marker.get("inputs") == inputs and "build" not in marker:
                if self.release(release_id).is_dir():
                    return release_id, marker
        return None

    def mark_built(self, release_id: str, marker: dict[str, Any]) -> None:
        write_json(self.meta / f"{check_release_id(release_id)}.json", marker, 0o644)

    def forget(self, release_id: str) -> None:
        """Delete a release: its marker first, so a crash never leaves a marked husk; its
        directory too unless another release reuses it."""
        (self.meta / f"{check_release_id(release_id)}.json").unlink(missing_ok=True)
        users = {self._build_of(r, m) for r, m in self._markers().items()}
        if release_id not in users:
            shutil.rmtree(self.release(release_id), ignore_errors=True)

    def release_ids(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        return sorted(p.name for p in self.releases.iterdir() if not p.name.startswith("."))

    # -- current -------------------------------------------------------------------------

    def switch_current(self, release_id: str) -> None:
        """Point `current` at the release's directory: a new symlink renamed over the old."""
        tmp = self.root / f".current.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("releases") / self.build_dir(release_id).name, tmp)
        os.replace(tmp, self.current)
        fsync_dir(self.root)

    def current_release(self) -> str | None:
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        return Path(target).name

    # -- pruning -------------------------------------------------------------------------

    def prune(self, keep: int, history: list[str], protect: Collection[str]) -> list[str]:
        """Delete releases beyond the `keep` most recently live ones (never `protect`), and
        the directories no kept release runs from."""
        kept = set(history[:keep]) | set(protect)
        markers = self._markers()
        removed = sorted(r for r in set(markers) | set(self.release_ids()) if r not in kept)
        for release_id in removed:
            (self.meta / f"{release_id}.json").unlink(missing_ok=True)
        used = {self._build_of(r, markers.get(r, {})) for r in kept}
        for release_id in self.release_ids():
            if release_id not in used:
                shutil.rmtree(self.release(release_id), ignore_errors=True)
        return removed


def now_ms() -> int:
    return time.time_ns() // 1_000_000
