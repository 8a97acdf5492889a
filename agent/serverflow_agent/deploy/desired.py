"""The desired-state document (docs/deploys.md): checking it, and what each app entry means.

Names, release ids, repository URLs and branches come from users (through the control
plane): they are checked here before anything turns them into a path or an argument.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from serverflow_contract import protocol
from serverflow_contract.desired import APP_NAME, COMMIT, RELEASE_ID

ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
DEFAULT_KEEP_RELEASES = 5
DEFAULT_HEALTH_TIMEOUT_S = 60.0
ALLOWED_SCHEMES = ("https", "http", "ssh", "git", "file")

_APP_NAME = re.compile(APP_NAME)
_RELEASE_ID = re.compile(RELEASE_ID)
_COMMIT = re.compile(COMMIT)
_ENV_NAME = re.compile(ENV_NAME)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_REMOTE_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
# user@host:path (git reads it as ssh when no "/" comes before the ":")
_SCP_LIKE = re.compile(r"(?:[A-Za-z0-9._~+-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:.+")
_DOMAIN = re.compile(
    r"(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
_HEALTH_PATH = re.compile(r"/[\x21-\x7e]{0,2000}")


class DeployError(Exception):
    """A deploy step failed; the message is the reason a person reads."""

    def __init__(self, reason: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = list(log_tail)


# -- single values ------------------------------------------------------------------------


def check_app_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > 63 or not _APP_NAME.fullmatch(name):
        raise DeployError(
            f"invalid app name {str(name)[:80]!r}: lower-case letters, digits, and single "
            "'-' or '_' between them, at most 63 characters"
        )
    return name


def check_release_id(release: Any) -> str:
    if not isinstance(release, str) or not _RELEASE_ID.fullmatch(release):
        raise DeployError(
            f"invalid release id {str(release)[:80]!r}: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 80 characters"
        )
    return release


def check_commit(commit: Any) -> str:
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise DeployError(f"invalid commit {str(commit)[:80]!r}: expected a full SHA (hex)")
    return commit


def check_repo(url: Any) -> str:
    """A repository URL git may be given: never an option, never a remote helper."""
    if not isinstance(url, str) or not url:
        raise DeployError("the repository URL is missing")
    if len(url) > 2048:
        raise DeployError("the repository URL is longer than 2048 characters")
    if url.startswith("-"):
        raise DeployError(f"refused repository URL {redact(url)!r}: it starts with '-'")
    if _REMOTE_HELPER.match(url):
        raise DeployError(
            f"refused repository URL {redact(url)!r}: git remote helpers "
            "('transport::address', such as ext::) are not allowed"
        )
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise DeployError("refused repository URL: it contains spaces or control characters")
    scheme = _SCHEME.match(url)
    if scheme:
        if scheme.group(1).lower() not in ALLOWED_SCHEMES:
            raise DeployError(
                f"refused repository URL {redact(url)!r}: the {scheme.group(1)}:// scheme is "
                f"not supported (use {', '.join(s + '://' for s in ALLOWED_SCHEMES)})"
            )
        return url
    if url.startswith("/") or _SCP_LIKE.fullmatch(url):
        return url
    raise DeployError(
        f"refused repository URL {redact(url)!r}: use an https:// or ssh:// URL, "
        "user@host:path, or an absolute path on the server"
    )


def check_branch(branch: Any) -> str:
    """A branch name git would accept (git check-ref-format), and never an option."""
    bad = (
        not isinstance(branch, str)
        or not branch
        or len(branch) > 255
        or branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or branch == "@"
        or any(s in branch for s in ("..", "//", "@{", "/."))
        or any(c in branch for c in " ~^:?*[\\\x7f")
        or any(ord(c) < 32 for c in branch)
    )
    if bad:
        raise DeployError(f"invalid branch name {str(branch)[:80]!r}")
    assert isinstance(branch, str)
    return branch


def redact(url: str) -> str:
    """The URL without a password or token in it, for messages and logs."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username
    netloc = f"{user}:***@{host}" if parts.password is not None else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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


# -- the document -------------------------------------------------------------------------


def document_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the document without its `hash` member."""
    body = {k: v for k, v in document.items() if k != "hash"}
    return hashlib.sha256(protocol.canonical(body)).hexdigest()


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
    env: Mapping[str, str] = field(default_factory=dict)
    health: Health = Health(None)
    domains: tuple[str, ...] = ()
    tls: bool = False
    keep_releases: int = DEFAULT_KEEP_RELEASES
    digest: str = ""

    @property
    def process_prefix(self) -> str:
        return f"{self.name}--"


def parse_app(raw: Any) -> AppSpec:
    if not isinstance(raw, dict):
        raise DeployError("an app entry must be an object")
    name = check_app_name(raw.get("name"))
    runtime = raw.get("runtime") or "pm2"
    if not isinstance(runtime, str) or not _APP_NAME.fullmatch(runtime):
        raise DeployError(f"invalid runtime {str(runtime)[:40]!r}")
    build = raw.get("build")
    if build is not None:
        if not isinstance(build, list) or len(build) > 20:
            raise DeployError("build must be a list of at most 20 commands (argv lists)")
        build = tuple(_argv(step, "each build command") for step in build)
    start = raw.get("start")
    if start is not None:
        start = _argv(start, "start")
    port = raw.get("port")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
    ):
        raise DeployError(f"invalid port {port!r}")
    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise DeployError("env must be an object of strings")
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key):
            raise DeployError(f"invalid environment variable name {key[:80]!r}")
        if not isinstance(value, str) or "\0" in value or len(value) > 65536:
            raise DeployError(f"environment variable {key} must be a string (no NUL, < 64 KiB)")
    health_raw = raw.get("health")
    health = Health(None)
    if health_raw is not None:
        if not isinstance(health_raw, dict):
            raise DeployError("health must be an object {path, timeout_s}")
        path = health_raw.get("path")
        if path is not None and (not isinstance(path, str) or not _HEALTH_PATH.fullmatch(path)):
            raise DeployError(f"invalid health-check path {str(path)[:80]!r}")
        timeout = health_raw.get("timeout_s", DEFAULT_HEALTH_TIMEOUT_S)
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 1 <= timeout <= 1800
        ):
            raise DeployError("health.timeout_s must be a number of seconds from 1 to 1800")
        health = Health(path, float(timeout))
    domains = raw.get("domains") or []
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise DeployError("domains must be a list of host names")
    for domain in domains:
        if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
            raise DeployError(f"invalid domain {domain[:80]!r}")
    tls = raw.get("tls") or False
    if not isinstance(tls, bool):
        raise DeployError("tls must be true or false")
    keep = raw.get("keep_releases", DEFAULT_KEEP_RELEASES)
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 100:
        raise DeployError("keep_releases must be an integer from 1 to 100")
    return AppSpec(
        name=name,
        release=check_release_id(raw.get("release")),
        commit=check_commit(raw.get("commit")),
        repo=check_repo(raw.get("repo")),
        runtime=runtime,
        build=build,
        start=start,
        port=port,
        env=dict(env),
        health=health,
        domains=tuple(domains),
        tls=tls,
        keep_releases=keep,
        digest=entry_digest(raw),
    )
