"""Ports for releases: a free one from the configured range, or a fixed one checked first."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Collection

import psutil

from serverflow_agent.deploy.desired import DeployError


def in_use(port: int) -> bool:
    """Whether something listens on `port` (any address, IPv4 or IPv6)."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        with contextlib.closing(sock):
            # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return True
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
    return False


def allocate(port_range: tuple[int, int], reserved: Collection[int] = ()) -> int:
    """The first port of the range that is neither reserved nor in use."""
    low, high = port_range
    for port in range(low, high + 1):
        if port not in reserved and not in_use(port):
            return port
    raise DeployError(f"no free port left in the range {low}-{high}")


def check_fixed(port: int) -> None:
    if in_use(port):
        raise DeployError(f"port {port} is already in use")


def listening_pids(port: int) -> set[int]:
    """The processes with a listening TCP socket on `port` (any address)."""
    pids = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is not None:
                pids.add(conn.pid)
    return pids


def served_by(pid: int, port: int) -> bool:
    """Whether `pid`, or a process it started, listens on `port`."""
    try:
        parent = psutil.Process(pid)
        family = {parent.pid, *(p.pid for p in parent.children(recursive=True))}
    except psutil.Error:
        return False
    return bool(family & listening_pids(port))
