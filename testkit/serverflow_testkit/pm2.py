"""PM2 with its own PM2_HOME in a temp dir; `pm2 kill` on the way out leaves nothing behind.

`processes(home)` reads `pm2 jlist` independently of the runtime plugin under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serverflow_testkit import missing


def require_node_and_pm2() -> None:
    for binary, how in (
        ("node", "apt-get install nodejs npm"),
        ("npm", "apt-get install npm"),
        ("pm2", "npm install -g pm2"),
    ):
        if shutil.which(binary) is None:
            missing(binary, f"`{how}` has not been run")


@contextmanager
def pm2_home(directory: Path) -> Iterator[Path]:
    if shutil.which("pm2") is None:
        missing("pm2", "`npm install -g pm2` has not been run")
    home = directory / "pm2"
    home.mkdir(parents=True, exist_ok=True)
    try:
        yield home
    finally:
        subprocess.run(
            ["pm2", "kill"],
            env={**os.environ, "PM2_HOME": str(home)},
            capture_output=True,
            timeout=60,
            check=False,
        )


def processes(home: Path) -> dict[str, dict[str, Any]]:
    """name -> {pid, status, restarts} from `pm2 jlist` ({} when no daemon runs)."""
    pid_file = home / "pm2.pid"
    if not pid_file.exists():
        return {}
    out = subprocess.run(
        ["pm2", "jlist"],
        env={**os.environ, "PM2_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    listing = next(
        line for line in reversed(out.splitlines()) if line.startswith("[") and "]" in line
    )
    return {
        p["name"]: {
            "pid": p["pid"],
            "status": p["pm2_env"]["status"],
            "restarts": p["pm2_env"]["restart_time"],
        }
        for p in json.loads(listing)
    }


def daemon_pid(home: Path) -> int:
    return int((home / "pm2.pid").read_text().strip())
