"""Helpers for deploy tests: desired-state documents, a reconciler on temp dirs, HTTP.

`LocalDeploys` runs the real reconciler (serverflow_agent.deploy.reconcile) in the test
process against a temporary state dir, a private PM2_HOME and a port range of its own,
with the real runtime plugins loaded through their entry points. It records every
progress line, so tests can see what a deploy did (and did not do).
"""

from __future__ import annotations

import random
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serverflow_agent.config import ensure_state_dir
from serverflow_agent.deploy.reconcile import Reconciler
from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.state import AgentState
from serverflow_contract.desired import document_hash


def document(version: int, apps: list[dict[str, Any]], deployment: str | None = None) -> dict:
    doc: dict[str, Any] = {
        "version": version,
        "deployment": deployment or f"dep-{version}",
        "apps": apps,
    }
    doc["hash"] = document_hash(doc)
    return doc


def entry(name: str, repo: str, commit: str, release: str, **overrides: Any) -> dict[str, Any]:
    """An app entry as docs/deploys.md shows it (detection, free port, /healthz)."""
    return {
        "name": name,
        "runtime": "pm2",
        "repo": repo,
        "commit": commit,
        "release": release,
        "build": None,
        "start": None,
        "port": None,
        "env": {"NODE_ENV": "production"},
        "health": {"path": "/healthz", "timeout_s": 30},
        "domains": [],
        "tls": False,
        "keep_releases": 5,
        **overrides,
    }


def port_range(size: int = 40) -> tuple[int, int]:
    """A range for app ports: below the kernel's ephemeral ports (which outgoing
    connections use), at a random place, so that test runs side by side rarely share
    ports (the agent skips taken ones anyway)."""
    low = random.randrange(20_000, 30_000 - size)
    return (low, low + size)


def deploy_settings(state_dir: Path, pm2_home: Path, **extra: Any) -> dict[str, Any]:
    """The `deploy` section of agent.json for a test agent."""
    return {
        "pm2_home": str(pm2_home),
        "port_range": list(port_range()),
        "drain_seconds": 0.2,
        **extra,
    }


def get(port: int, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def refused(port: int) -> bool:
    try:
        get(port, timeout=2)
    except (urllib.error.URLError, ConnectionError, OSError):
        return True
    return False


@dataclass
class LocalDeploys:
    state_dir: Path
    pm2_home: Path
    settings: DeploySettings
    lines: list[tuple[str | None, str | None, str]] = field(default_factory=list)
    version: int = 0

    @classmethod
    def create(cls, base: Path, pm2_home: Path, **extra: Any) -> LocalDeploys:
        state_dir = ensure_state_dir(base / "state")
        AgentState.open(state_dir).close()
        raw = deploy_settings(state_dir, pm2_home, **extra)
        return cls(state_dir, pm2_home, DeploySettings.from_config(state_dir, raw))

    def _emit(self, line: str, app: str | None, stage: str | None) -> None:
        self.lines.append((app, stage, line))

    def apply_document(self, doc: dict[str, Any]) -> dict[str, Any]:
        self.lines.clear()
        return Reconciler(self.settings, self.state_dir, emit=self._emit).apply(doc)

    def apply(self, *apps: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        return self.apply_document(document(self.version, list(apps)))

    def stages(self, app: str, stage: str) -> list[str]:
        return [line for a, s, line in self.lines if a == app and s == stage]

    def log(self) -> str:
        return "\n".join(f"[{a}/{s}] {line}" for a, s, line in self.lines)

    def app_dir(self, app: str) -> Path:
        return self.settings.apps_dir / app
