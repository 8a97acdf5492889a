"""What an app asks of the proxy (`Route`) and the checks that keep nginx's syntax safe.

Everything that ends up inside an nginx file is checked here first, so a value can never
close a block, start a directive or smuggle a variable: a bad value is refused before
anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_agent.proxy.errors import ProxyError
from serverflow_contract import naming

_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_FS_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
SHARED_NAME = naming.PROXY_SHARED_NAME  # the shared file's stem; never an app name


@dataclass(frozen=True)
class Route:
    """Where an app is reached: its domains and/or its public port, an optional path prefix,
    and what serves it.

    Exactly one of `upstream_port` (a process on 127.0.0.1) or `static_root` (a directory
    nginx serves itself) is set. `static_paths` are URL prefixes nginx serves from a
    directory in front of the upstream (a Django app's STATIC_URL, say). `public_port` is a
    port nginx listens on for this app alone, whatever the Host (plain HTTP): the stable
    address of an app without a domain.
    """

    domains: list[str]
    upstream_port: int | None = None
    static_root: str | None = None
    path: str = "/"
    static_paths: tuple[tuple[str, str], ...] = ()
    public_port: int | None = None


check_release = naming.failing_as(ProxyError, naming.check_release_id)
check_domain = naming.failing_as(ProxyError, naming.check_domain)
_check_domains = naming.failing_as(ProxyError, naming.check_domains)


check_app = naming.failing_as(ProxyError, naming.check_app_name)


def check_domains(domains: Any) -> list[str]:
    if isinstance(domains, list | tuple) and not domains:
        raise ProxyError("a route needs at least one domain (a list of host names)")
    return _check_domains(domains)


def check_path(path: str) -> str:
    """A URL path prefix, normalised to start and end with '/'."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ProxyError(f"invalid path {path!r}: it must start with '/'")
    segments = [s for s in path.split("/") if s]
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise ProxyError(
                f"invalid path {path!r}: segments may hold letters, digits, '.', '_', '~' "
                "or '-' and may not be '.' or '..'"
            )
    return "/" + "".join(f"{s}/" for s in segments)


def check_port(port: int, what: str = "upstream port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ProxyError(f"invalid {what} {port!r}: it must be an integer 1-65535")
    return port


def check_fs_path(path: str | Path, what: str) -> str:
    """An absolute file-system path made of characters that are plain in nginx syntax."""
    text = str(path)
    if not _FS_PATH.fullmatch(text) or "/../" in f"{text}/":
        raise ProxyError(
            f"invalid {what} {text!r}: it must be absolute and hold only letters, digits "
            "and . _ / @ + -"
        )
    return text


def checked(route: Route) -> Route:
    """The route with normalised values, or ProxyError naming what is wrong."""
    if not isinstance(route, Route):
        raise ProxyError(f"expected a Route, got {type(route).__name__}")
    if (route.upstream_port is None) == (route.static_root is None):
        raise ProxyError("a route needs exactly one of upstream_port or static_root")
    public_port = None if route.public_port is None else check_port(route.public_port, "port")
    if public_port is None or route.domains:
        domains = check_domains(route.domains)
    else:
        domains = []  # reached at its public port only
    return Route(
        domains=domains,
        upstream_port=None if route.upstream_port is None else check_port(route.upstream_port),
        static_root=(
            None if route.static_root is None else check_fs_path(route.static_root, "static root")
        ),
        path=check_path(route.path),
        static_paths=tuple(
            (check_path(prefix), check_fs_path(directory, "static files directory"))
            for prefix, directory in route.static_paths
        ),
        public_port=public_port,
    )
