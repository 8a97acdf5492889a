"""Waiting for a new release to be healthy: HTTP 2xx/3xx on its health path, in time.

The request carries the app's first domain as its Host header (and the X-Forwarded-*
headers nginx will add), so a framework that refuses unknown hosts (Django's
ALLOWED_HOSTS, say) fails the deploy instead of going live behind a 400. An app that
answers with an error for `FAIL_FAST_S` in a row fails at once; the long timeout is for an
app that is not listening yet.
"""

from __future__ import annotations

import html
import http.client
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from serverflow_agent.deploy.desired import DeployError, Health

POLL_S = 0.2
REQUEST_TIMEOUT_S = 5.0
FAIL_FAST_S = 5.0
EXCERPT_MAX = 200
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    text: str
    status: int | None = None  # the HTTP status, when the app answered one


def excerpt(body: bytes) -> str:
    """A response body as one short line: text without markup, whitespace collapsed."""
    text = html.unescape(_TAGS.sub(" ", body[:65536].decode("utf-8", "replace")))
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_MAX else text[: EXCERPT_MAX - 3] + "..."


def probe(
    port: int, path: str | None, host: str | None = None, tls: bool = False
) -> Problem | None:
    """None when healthy, else what was wrong (for the failure reason)."""
    if path is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S).close()
        except OSError as exc:
            return Problem(f"port {port} does not accept connections ({exc.strerror or exc})")
        return None
    shown = f"GET {path}" + (f" (Host: {host})" if host else "")
    headers = {"User-Agent": "serverflow-agent health check"}
    if host:
        headers.update(
            {
                "Host": host,
                "X-Forwarded-Host": host,
                "X-Forwarded-Proto": "https" if tls else "http",
                "X-Forwarded-For": "127.0.0.1",
            }
        )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return Problem(f"{shown} on port {port}: no answer ({detail})")
    finally:
        conn.close()
    if 200 <= response.status < 400:
        return None
    said = excerpt(body)
    return Problem(
        f"{shown} answered {response.status}" + (f": {said}" if said else ""), response.status
    )


def wait_healthy(
    port: int,
    health: Health,
    crashed: Callable[[], str | None],
    on_wait: Callable[[str], None] | None = None,
    host: str | None = None,
    tls: bool = False,
) -> None:
    """Poll until healthy; raise DeployError on timeout, as soon as `crashed` says so, or
    when the app answers with an error status for FAIL_FAST_S without a success."""
    deadline = time.monotonic() + health.timeout_s
    last_check = 0.0
    last_problem = "not checked yet"
    reported = 0.0
    erring_since: float | None = None
    while True:
        found = probe(port, health.path, host, tls)
        if found is None:
            return
        problem = last_problem = found.text
        now = time.monotonic()
        if found.status is None:
            erring_since = None
        elif erring_since is None:
            erring_since = now
        elif now - erring_since >= FAIL_FAST_S:
            raise DeployError(
                f"health check failed: {problem} (every answer for {FAIL_FAST_S:g} s)"
            )
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
