"""Waiting for a new release to be healthy: HTTP 2xx/3xx on its health path, in time."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable

from serverflow_agent.deploy.desired import DeployError, Health

POLL_S = 0.2
REQUEST_TIMEOUT_S = 5.0


def probe(port: int, path: str | None) -> str | None:
    """None when healthy, else what was wrong (for the failure reason)."""
    if path is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S).close()
        except OSError as exc:
            return f"port {port} does not accept connections ({exc.strerror or exc})"
        return None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("GET", path, headers={"User-Agent": "serverflow-agent health check"})
        response = conn.getresponse()
        response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"GET {path} on port {port}: no answer ({detail})"
    finally:
        conn.close()
    if 200 <= response.status < 400:
        return None
    return f"GET {path} answered {response.status}"


def wait_healthy(
    port: int,
    health: Health,
    crashed: Callable[[], str | None],
    on_wait: Callable[[str], None] | None = None,
) -> None:
    """Poll until healthy; raise DeployError on timeout or as soon as `crashed` says so."""
    deadline = time.monotonic() + health.timeout_s
    last_check = 0.0
    last_problem = "not checked yet"
    reported = 0.0
    while True:
        problem = probe(port, health.path)
        if problem is None:
            return
        last_problem = problem
        now = time.monotonic()
        if now - last_check >= 1.0:
            last_check = now
            why = crashed()
            if why:
                raise DeployError(f"the app {why}")
        if on_wait is not None and now - reported >= 5.0:
            reported = now
            on_wait(f"waiting for the app: {problem}")
        if now > deadline:
            raise DeployError(
                f"health check failed: {last_problem} (no success within {health.timeout_s:g} s)"
            )
        time.sleep(POLL_S)
