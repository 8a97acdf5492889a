"""Starting the real components tests talk to (see ../shared/TESTING.md).

A component that cannot be found or started skips its tests with the reason, except when
SERVERFLOW_REQUIRE_REAL=1 (CI): then it fails them.
"""

from __future__ import annotations

import os
import socket

import pytest

REQUIRE_REAL = os.environ.get("SERVERFLOW_REQUIRE_REAL") == "1"


def missing(component: str, reason: str) -> None:
    message = f"{component} is not available: {reason}"
    if REQUIRE_REAL:
        pytest.fail(message + " (SERVERFLOW_REQUIRE_REAL=1)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
