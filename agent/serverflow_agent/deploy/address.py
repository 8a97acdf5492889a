"""The address this server's apps are reached at, which `state.apply` tells the control plane
(it makes the URLs of apps without a domain: http://<address>:<public port>)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from serverflow_agent.config import AgentConfig, ConfigError
from serverflow_agent.deploy.settings import DeploySettings


def public_address(settings: DeploySettings, state_dir: Path) -> str | None:
    """`deploy.public_address` if set, else this host's address on the route to the control
    plane (a VPS's public address, unless it sits behind NAT), else None."""
    if settings.public_address:
        return settings.public_address
    try:
        url = AgentConfig.load(state_dir).url
    except ConfigError:
        return None
    return route_address(url)


def route_address(url: str) -> str | None:
    """The local address the kernel would send from to reach `url`'s host."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not host:
        return None
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _, where in found:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.connect(where)  # UDP: this only chooses the route, nothing is sent
                local = str(sock.getsockname()[0])
        except OSError:
            continue
        return local.split("%", 1)[0]  # no IPv6 zone index
    return None
