"""Naming rules: what an app, release, domain, repository URL, branch or env name may be.

The control plane's API, CLI and MCP tools and the agent all check user-given names with
these functions, so what one side accepts the other accepts. Each returns the value
(normalised where it says so) or raises `InvalidName` with a message a person can act on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

APP_NAME_MAX = 63
RELEASE_ID_MAX = 80
DOMAIN_MAX = 253
REPO_URL_MAX = 1000
BRANCH_MAX = 255
ENV_NAME_MAX = 128
ENV_VALUE_MAX = 32_768
HEALTH_PATH_MAX = 255
PROCESS_TYPE_MAX = 30
PROCESS_SCALE_MAX = 20
# Procfile process types (Heroku's rule): `web` serves HTTP, `release` runs once per deploy.
WEB = "web"
RELEASE = "release"
PROCESS_TYPE = r"[A-Za-z][A-Za-z0-9_]{0,29}"

# A DNS label without "--": an app's processes are named "<app>--<release>", and an app
# may get "<app>.<server domain>" as its address.
APP_NAME = r"[a-z0-9]+(?:-[a-z0-9]+)*"
# A server's name in the control plane: a DNS label.
SERVER_NAME = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# The stem of the proxy's shared config file (<conf dir>/00-serverflow.conf).
PROXY_SHARED_NAME = "00-serverflow"
RESERVED_APP_NAMES = frozenset({PROXY_SHARED_NAME})
RELEASE_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"
COMMIT = r"[0-9a-f]{40}|[0-9a-f]{64}"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
RUNTIME_NAME = r"[a-z0-9]+(?:[_-][a-z0-9]+)*"
RUNTIME_NAME_MAX = 40
REPO_SCHEMES = ("https", "http", "ssh", "git", "file")
SSH_ALIASES = ("git+ssh", "ssh+git")

_APP_NAME = re.compile(APP_NAME)
_RELEASE_ID = re.compile(RELEASE_ID)
_COMMIT = re.compile(COMMIT)
_ENV_NAME = re.compile(ENV_NAME)
_RUNTIME_NAME = re.compile(RUNTIME_NAME)
_PROCESS_TYPE = re.compile(PROCESS_TYPE)
_TYPED_PROCESS = re.compile(
    rf"(?P<release>{RELEASE_ID}?)--(?P<type>{PROCESS_TYPE})-(?P<index>[1-9][0-9]?)"
)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_REMOTE_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
# [user@]host:path, host also [IPv6] (git reads it as ssh when no "/" comes before the ":")
_SCP_LIKE = re.compile(
    r"(?:(?P<user>[A-Za-z0-9._~+-]+)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<path>.+)"
)
_HEALTH_PATH = re.compile(r"/[\x21-\x7e]*")


T = TypeVar("T")


class InvalidName(ValueError):
    """A name or URL a user gave breaks a naming rule; the message says which."""


def failing_as(error: Callable[[str], Exception], check: Callable[[Any], T]) -> Callable[[Any], T]:
    """`check`, raising `error(message)` instead of InvalidName (a side's own error type)."""

    def checked(value: Any) -> T:
        try:
            return check(value)
        except InvalidName as exc:
            raise error(str(exc)) from None

    return checked


def _shown(value: Any) -> str:
    return repr(str(value)[:80])


def check_app_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > APP_NAME_MAX or not _APP_NAME.fullmatch(name):
        raise InvalidName(
            f"invalid app name {_shown(name)}: lower-case letters and digits, with single "
            f"'-' between them, at most {APP_NAME_MAX} characters"
        )
    if name in RESERVED_APP_NAMES:
        raise InvalidName(f"invalid app name {name!r}: it is reserved")
    return name


def check_runtime_name(name: Any) -> str:
    """The name a runtime plugin registers (pm2, docker) and an app asks for."""
    if (
        not isinstance(name, str)
        or len(name) > RUNTIME_NAME_MAX
        or not _RUNTIME_NAME.fullmatch(name)
    ):
        raise InvalidName(
            f"invalid runtime name {_shown(name)}: lower-case letters and digits with single "
            f"'-' or '_' between them, at most {RUNTIME_NAME_MAX} characters"
        )
    return name


def process_name(app: str, release: str, process_type: str = WEB, index: int = 1) -> str:
    """The name a runtime gives one process of a release: `<app>--<release>` for its web
    process, `<app>--<release>--<type>-<n>` for the n-th process of another Procfile type."""
    if process_type == WEB:
        return f"{app}--{release}"
    return f"{app}--{release}--{process_type}-{index}"


def parse_process_name(app: str, name: str) -> tuple[str, str, int] | None:
    """(release, process type, index) of a name `process_name` made for `app`, else None.
    Release ids made by the control plane (`r<n>-<sha>`) never hold "--"."""
    prefix = process_prefix(app)
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    match = _TYPED_PROCESS.fullmatch(rest)
    if match:
        return match["release"], match["type"], int(match["index"])
    return (rest, WEB, 1) if _RELEASE_ID.fullmatch(rest) else None


def check_process_type(name: Any) -> str:
    if not isinstance(name, str) or not _PROCESS_TYPE.fullmatch(name):
        raise InvalidName(
            f"invalid process type {_shown(name)}: a letter, then letters, digits or '_', "
            f"at most {PROCESS_TYPE_MAX} characters"
        )
    return name


def process_prefix(app: str) -> str:
    """What the names of all of an app's release processes start with."""
    return f"{app}--"


def check_release_id(release: Any) -> str:
    if not isinstance(release, str) or not _RELEASE_ID.fullmatch(release):
        raise InvalidName(
            f"invalid release id {_shown(release)}: letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most {RELEASE_ID_MAX} characters"
        )
    return release


def check_commit(commit: Any) -> str:
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise InvalidName(f"invalid commit {_shown(commit)}: expected a full SHA (hex)")
    return commit


def check_domain(domain: Any) -> str:
    """A DNS host name, lower-cased, without a trailing dot; no wildcards, ports or IPs."""
    if not isinstance(domain, str):
        raise InvalidName(f"invalid domain {_shown(domain)}: not a string")
    name = domain.strip().lower().removesuffix(".")
    labels = name.split(".")
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > DOMAIN_MAX:
        problem = f"it is longer than {DOMAIN_MAX} characters"
    elif not name.isascii():
        problem = "write an internationalised name in its punycode (xn--) form"
    elif len(labels) < 2:
        problem = "it needs at least two labels (like example.com)"
    elif not all(_LABEL.fullmatch(label) for label in labels):
        problem = (
            "each dot-separated label must be 1-63 letters, digits or '-' "
            "and must not start or end with '-'"
        )
    elif labels[-1].isdigit():
        problem = "an IP address is not a domain"
    if problem:
        raise InvalidName(f"invalid domain {_shown(domain)}: {problem}")
    return name


def check_domains(domains: Any) -> list[str]:
    """Each domain checked and normalised, duplicates dropped, order kept."""
    if isinstance(domains, str) or not isinstance(domains, list | tuple):
        raise InvalidName("domains must be a list of host names")
    checked: list[str] = []
    for domain in domains:
        name = check_domain(domain)
        if name not in checked:
            checked.append(name)
    return checked


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


def check_repo_url(url: Any) -> str:
    """A repository URL git may be given: never an option, never a remote helper.

    What git accepts of its URL forms: `https://` and `http://` (user, password, port and
    an [IPv6] host allowed), `ssh://[user@]host[:port]/path`, `git://host[:port]/path`,
    `file:///path`, scp-like `[user@]host:path` (host also `[IPv6]`), and an absolute path
    on the server. Refused: anything git would read as an option (a URL, host, user or
    scp-like path starting with '-'), `transport::address` remote helpers (ext::, fd::),
    spaces and control characters. Returned stripped, the scheme lower-cased (git knows
    `https`, not `HTTPS`).
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidName("the repository URL is missing")
    url = url.strip()
    if len(url) > REPO_URL_MAX:
        raise InvalidName(f"the repository URL is longer than {REPO_URL_MAX} characters")
    if url.startswith("-"):
        raise InvalidName(f"refused repository URL {redact(url)!r}: it starts with '-'")
    if _REMOTE_HELPER.match(url):
        raise InvalidName(
            f"refused repository URL {redact(url)!r}: git remote helpers "
            "('transport::address', such as ext::) are not allowed"
        )
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidName("refused repository URL: it contains spaces or control characters")
    scheme = _SCHEME.match(url)
    if scheme:
        name = scheme.group(1).lower()
        if name in SSH_ALIASES:
            raise InvalidName(
                f"refused repository URL {redact(url)!r}: {name}:// is git's deprecated "
                "spelling of ssh://; write ssh://"
            )
        if name not in REPO_SCHEMES:
            raise InvalidName(
                f"refused repository URL {redact(url)!r}: the {scheme.group(1)}:// scheme is "
                f"not supported (use {', '.join(s + '://' for s in REPO_SCHEMES)})"
            )
        url = name + url[len(name) :]
        problem = _url_problem(url, name)
    elif url.startswith("/"):
        return url  # a path on the server
    elif scp := _SCP_LIKE.fullmatch(url):
        problem = _scp_problem(scp)
    else:
        problem = "use an https:// or ssh:// URL, user@host:path, or an absolute path on the server"
    if problem:
        raise InvalidName(f"refused repository URL {redact(url)!r}: {problem}")
    return url


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _url_problem(url: str, scheme: str) -> str | None:
    """What is wrong with a scheme://... repository URL, if anything."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # unbalanced [ ], a port that is no number or out of range
        return f"it is not a valid URL ({exc})"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = parts.hostname or ""
    if scheme == "file":
        if host not in ("", "localhost"):
            return "a file:// URL names a path on the server itself (file:///path)"
        return None if parts.path else "it names no path"
    if "@" in userinfo:
        return "write an '@' in the user name as %40"
    if not host:
        return "it names no host"
    if host.startswith("-") or (at and userinfo.startswith("-")):
        return "a host or user name must not start with '-'"
    if hostport.startswith("[") and not _is_ipv6(host):
        return "the host in brackets is not an IPv6 address"
    if port == 0:
        return "port 0 is not a port"
    if scheme in ("ssh", "git") and not parts.path:
        return "it names no path on the host"
    return None


def _scp_problem(match: re.Match[str]) -> str | None:
    """What is wrong with a scp-like [user@]host:path, if anything."""
    host = match.group("host")
    if host.startswith("[") and not _is_ipv6(host[1:-1]):
        return "the host in brackets is not an IPv6 address"
    if match.group("path").startswith("-"):
        return "the path must not start with '-'"
    return None


def check_branch(branch: Any) -> str:
    """A branch name git would accept (git check-ref-format), and never an option."""
    bad = (
        not isinstance(branch, str)
        or not branch
        or len(branch) > BRANCH_MAX
        or branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or branch == "@"
        or any(s in branch for s in ("..", "//", "@{", "/."))
        or any(c in branch for c in " ~^:?*[\\\x7f")
        or any(ord(c) < 32 for c in branch)
    )
    if bad:
        raise InvalidName(f"invalid branch name {_shown(branch)}")
    assert isinstance(branch, str)
    return branch


def check_env_name(name: Any) -> str:
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise InvalidName(
            f"invalid environment variable name {_shown(name)}: letters, digits and '_', "
            f"not starting with a digit, at most {ENV_NAME_MAX} characters"
        )
    return name


def check_env(env: Any) -> dict[str, str]:
    """An app's environment: valid names, string values without NUL, each at most 32 KiB."""
    if not isinstance(env, dict):
        raise InvalidName("env must be an object of strings")
    for key, value in env.items():
        check_env_name(key)
        if not isinstance(value, str) or "\0" in value or len(value) > ENV_VALUE_MAX:
            raise InvalidName(
                f"the value of {key} must be a string without NUL, at most "
                f"{ENV_VALUE_MAX} characters"
            )
    return dict(env)


def check_health_path(path: Any) -> str:
    """The path the health check requests: '/' and visible ASCII, no spaces."""
    if not isinstance(path, str) or len(path) > HEALTH_PATH_MAX or not _HEALTH_PATH.fullmatch(path):
        raise InvalidName(
            f"invalid health-check path {_shown(path)}: it must start with '/' and hold "
            f"visible ASCII characters only, at most {HEALTH_PATH_MAX}"
        )
    return path
