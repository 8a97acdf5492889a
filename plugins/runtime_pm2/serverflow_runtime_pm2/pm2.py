"""Talking to the `pm2` binary with a private PM2_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any


class Pm2Error(RuntimeError):
    pass


def pm2_env(pm2_home: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PM2_HOME"] = pm2_home or env.get("PM2_HOME") or os.path.expanduser("~/.serverflow/pm2")
    return env


def run_pm2(args: list[str], pm2_home: str | None = None, timeout: float = 30) -> str:
    binary = shutil.which("pm2")
    if binary is None:
        raise Pm2Error("pm2 is not installed (npm install -g pm2)")
    proc = subprocess.run(
        [binary, *args],
        env=pm2_env(pm2_home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise Pm2Error(f"pm2 {args[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def jlist(pm2_home: str | None = None) -> list[dict[str, Any]]:
    out = run_pm2(["jlist"], pm2_home)
    # pm2 may print a banner before the JSON on first start.
    start = out.find("[")
    return json.loads(out[start:]) if start >= 0 else []


def status(params: dict[str, Any], pm2_home: str | None = None) -> dict[str, Any]:
    prefix = params.get("prefix", "")
    processes = []
    for proc in jlist(pm2_home):
        if not proc.get("name", "").startswith(prefix):
            continue
        env = proc.get("pm2_env", {})
        monit = proc.get("monit", {})
        processes.append(
            {
                "name": proc.get("name"),
                "pid": proc.get("pid"),
                "status": env.get("status"),
                "restarts": env.get("restart_time", 0),
                "memory": monit.get("memory"),
                "cpu": monit.get("cpu"),
            }
        )
    return {"processes": processes}
