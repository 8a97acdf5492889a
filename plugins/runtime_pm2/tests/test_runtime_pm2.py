"""The PM2 runtime: what the control-plane side plans, what the agent side reads from real PM2."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from serverflow.interfaces import Release, Runtime
from serverflow_agent.plugins import AgentPlugins
from serverflow_runtime_pm2 import pm2
from serverflow_runtime_pm2.control import Pm2Runtime
from tests.components.pm2 import pm2_home


def test_runtime_plans_agent_actions() -> None:
    runtime = Pm2Runtime()
    assert isinstance(runtime, Runtime)
    call = runtime.start(
        Release(
            app="shop",
            release_id="r7",
            directory="/srv/shop/r7",
            start_command=["node", "server.js"],
            port=4001,
            env={"NODE_ENV": "production"},
        )
    )
    assert call.action == "pm2.start"
    assert call.params["name"] == "shop--r7"
    assert call.params["command"] == ["node", "server.js"]
    assert runtime.status("shop").params == {"prefix": "shop--"}


def test_agent_side_registers_status_action() -> None:
    plugins = AgentPlugins()
    spec = plugins.actions.get("pm2.status")
    assert spec is not None and spec.kind == "read"
    assert plugins.actions.owner("pm2.status") == "runtime_pm2"


def test_status_reads_real_pm2(tmp_path: Path) -> None:
    with pm2_home(tmp_path) as home:
        script = tmp_path / "idle.js"
        script.write_text("setInterval(() => {}, 1000);\n")
        env = {**os.environ, "PM2_HOME": str(home)}
        subprocess.run(
            ["pm2", "start", str(script), "--name", "shop--r1"],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            ["pm2", "start", str(script), "--name", "other--r1"],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while True:
            result = pm2.status({"prefix": "shop--"}, pm2_home=str(home))
            procs = result["processes"]
            if procs and procs[0]["status"] == "online" and procs[0]["pid"]:
                break
            assert time.monotonic() < deadline, result
            time.sleep(0.2)
        assert [p["name"] for p in procs] == ["shop--r1"]
        os.kill(procs[0]["pid"], 0)  # a real process
