"""Starting the real components ServerFlow tests talk to, for this repo and its plugins.

One module per component (postgres, redis, pm2, nginx, pebble, gitrepo, controlplane,
protocol_peer, browser, tls, deploy); the fixtures built on them are in `plugin`, which
pytest loads through the `pytest11` entry point. A component that cannot be found or
started skips its tests with the reason, except when SERVERFLOW_REQUIRE_REAL=1 (CI): then
it fails them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REQUIRE_REAL = os.environ.get("SERVERFLOW_REQUIRE_REAL") == "1"


def missing(component: str, reason: str) -> None:
    message = f"{component} is not available: {reason}"
    if REQUIRE_REAL:
        pytest.fail(message + " (SERVERFLOW_REQUIRE_REAL=1)", pytrace=False)
    pytest.skip(message)


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    """Poll `check` every 0.1 s until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_listening(
    component: str,
    process: subprocess.Popen[bytes],
    port: int,
    log: Path,
    timeout: float = 15,
) -> None:
    """Wait until `process` accepts TCP connections on 127.0.0.1:`port`; if it exits or
    does not listen in time, stop it and report the component missing (with its log)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            missing(component, f"it exited at start: {text[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                stop_process(process)
                missing(component, f"it did not listen on {port} within {timeout:g} s")
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
