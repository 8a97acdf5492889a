"""PM2 with its own PM2_HOME in a temp dir; `pm2 kill` on the way out leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.components import missing


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
