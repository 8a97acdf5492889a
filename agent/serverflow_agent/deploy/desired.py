"""The desired-state document (docs/deploys.md): checking it, and what each app entry means.

Names, release ids, repository URLs and branches come from users (through the control
plane): they are checked here before anything turns them into a path or an argument.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serverflow_contract import naming, protocol

DEFAULT_KEEP_RELEASES = 5
DEFAULT_HEALTH_TIMEOUT_S = 60.0


class DeployError(Exception):
    """A deploy step failed; the message is the reason a person reads."""

    def __init__(self, reason: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = list(log_tail)


# -- single values: the contract's naming rules, failing as a deploy step does ------------


check_app_name = naming.failing_as(DeployError, naming.check_app_name)
check_release_id = naming.failing_as(DeployError, naming.check_release_id)
check_commit = naming.failing_as(DeployError, naming.check_commit)
check_repo = naming.failing_as(DeployError, naming.check_repo_url)
check_branch = naming.failing_as(DeployError, naming.check_branch)
check_env = naming.failing_as(DeployError, naming.check_env)
check_health_path = naming.failing_as(DeployError, naming.check_health_path)
check_domains = naming.failing_as(DeployError, naming.check_domains)
check_runtime_name = naming.failing_as(DeployError, naming.check_runtime_name)
check_process_type = naming.failing_as(DeployError, naming.check_process_type)
redact = naming.redact


def scrub(text: str, url: str) -> str:
    """`text` (git's own messages, say) without the credentials `url` carries."""
    if "://" not in url:
        return text
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    if "@" not in netloc:
        return text
    userinfo = netloc.rsplit("@", 1)[0]
    return text.replace(userinfo, "***")


def _argv(value: Any, what: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or len(value) > 200
        or not all(isinstance(a, str) and len(a) <= 4096 and "\0" not in a for a in value)
        or not value[0]
    ):
        raise DeployError(f"{what} must be a non-empty list of strings (an argv, not a shell line)")
    return tuple(value)


def _port(value: Any, what: str) -> int | None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535
    ):
        raise DeployError(f"invalid {what} {value!r}")
    return value


# -- the document -------------------------------------------------------------------------


def entry_digest(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(protocol.canonical(dict(entry))).hexdigest()


@dataclass(frozen=True)
class Health:
    path: str | None  # None: the port accepting connections is enough
    timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S


@dataclass(frozen=True)
class AppSpec:
    """One app entry of the document, checked."""

    name: str
    release: str
    commit: str
    repo: str
    runtime: str = "pm2"
    build: tuple[tuple[str, ...], ...] | None = None
    start: tuple[str, ...] | None = None
    port: int | None = None
    public_port: int | None = None  # the proxy listens here for the app, whatever the release
    env: Mapping[str, str] = field(default_factory=dict)
    health: Health = Health(None)
    domains: tuple[str, ...] = ()
    tls: bool = False
    keep_releases: int = DEFAULT_KEEP_RELEASES
    formation: Mapping[str, int] = field(default_factory=dict)  # processes per type
    digest: str = ""

    @property
    def process_prefix(self) -> str:
        return naming.process_prefix(self.name)


def parse_app(raw: Any) -> AppSpec:
    if not isinstance(raw, dict):
        raise DeployError("an app entry must be an object")
    name = check_app_name(raw.get("name"))
    runtime = raw.get("runtime") or "pm2"
    check_runtime_name(runtime)
    build = raw.get("build")
    if build is not None:
        if not isinstance(build, list) or len(build) > 20:
            raise DeployError("build must be a list of at most 20 commands (argv lists)")
        build = tuple(_argv(step, "each build command") for step in build)
    start = raw.get("start")
    if start is not None:
        start = _argv(start, "start")
    port = _port(raw.get("port"), "port")
    public_port = _port(raw.get("public_port"), "public port")
    if public_port is not None and public_port == port:
        raise DeployError(
            f"the fixed port {port} is also the app's public port: the proxy listens on the "
            "public port, the release needs another one"
        )
    env = check_env(raw.get("env") or {})
    health_raw = raw.get("health")
    health = Health(None)
    if health_raw is not None:
        if not isinstance(health_raw, dict):
            raise DeployError("health must be an object {path, timeout_s}")
        path = health_raw.get("path")
        if path is not None:
            check_health_path(path)
        timeout = health_raw.get("timeout_s", DEFAULT_HEALTH_TIMEOUT_S)
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 1 <= timeout <= 1800
        ):
            raise DeployError("health.timeout_s must be a number of seconds from 1 to 1800")
        health = Health(path, float(timeout))
    domains = check_domains(raw.get("domains") or [])
    tls = raw.get("tls") or False
    if not isinstance(tls, bool):
        raise DeployError("tls must be true or false")
    keep = raw.get("keep_releases", DEFAULT_KEEP_RELEASES)
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 100:
        raise DeployError("keep_releases must be an integer from 1 to 100")
    formation = raw.get("formation") or {}
    if not isinstance(formation, dict) or len(formation) > 20:
        raise DeployError("formation must be an object {process type: count}")
    for kind, count in formation.items():
        check_process_type(kind)
        if (
            not isinstance(count, int)
            or isinstance(count, bool)
            or not 0 <= count <= naming.PROCESS_SCALE_MAX
        ):
            raise DeployError(
                f"formation: {kind} must be a count from 0 to {naming.PROCESS_SCALE_MAX}"
            )
    if naming.WEB in formation and formation[naming.WEB] != 1:
        raise DeployError("formation: web runs one process per server")
    return AppSpec(
        name=name,
        release=check_release_id(raw.get("release")),
        commit=check_commit(raw.get("commit")),
        repo=check_repo(raw.get("repo")),
        runtime=runtime,
        build=build,
        start=start,
        port=port,
        public_port=public_port,
        env=env,
        health=health,
        domains=tuple(domains),
        tls=tls,
        keep_releases=keep,
        formation=dict(formation),
        digest=entry_digest(raw),
    )
