"""The PM2 runtime: the control-plane plan, and the agent side against the real `pm2`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from serverflow_agent.deploy.runtimes import load_runtimes
from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.plugins import AgentPlugins
from serverflow_contract.interfaces import Runtime
from serverflow_contract.runtime import ReleaseProcess
from serverflow_contract.runtime import Runtime as AgentRuntime
from serverflow_contract.schema import validate
from serverflow_runtime_pm2.control import Pm2Runtime
from serverflow_runtime_pm2.pm2 import Pm2Error, parse_jlist
from serverflow_runtime_pm2.pm2 import Pm2Runtime as AgentPm2
from serverflow_testkit import free_port, wait_for
from serverflow_testkit.pm2 import pm2_home, processes, require_node_and_pm2

APP = """
const http = require("http");
console.log("argv " + JSON.stringify(process.argv.slice(2)));
console.log("secret " + (process.env.AGENT_SECRET || "none") + " greeting " + process.env.GREETING);
console.error("to stderr");
http.createServer((q, s) => s.end("pid " + process.pid)).listen(Number(process.env.PORT));
"""


@pytest.fixture
def runtime(pm2_home_dir: Path) -> AgentPm2:
    """The runtime on a private PM2_HOME (serverflow-testkit's fixture)."""
    return AgentPm2(pm2_home_dir)


def test_control_plane_plans_what_the_agent_runs() -> None:
    """What the control-plane side plans is an action the agent side registers."""
    runtime = Pm2Runtime()
    assert isinstance(runtime, Runtime)
    call = runtime.restart("shop", "r7")
    assert call.action == "pm2.restart"
    assert call.params == {"name": "shop--r7"}
    spec = AgentPlugins().actions.get(call.action)
    assert spec is not None, f"the agent side registers no {call.action}"
    validate(dict(call.params), spec.params_schema)


def test_agent_side_registers_actions_and_runtime(tmp_path: Path) -> None:
    plugins = AgentPlugins()
    kinds = {name: plugins.actions.get(name) for name in ("pm2.status", "pm2.logs", "pm2.restart")}
    assert {n: s.kind for n, s in kinds.items() if s} == {
        "pm2.status": "read",
        "pm2.logs": "read",
        "pm2.restart": "change",
    }
    assert all(plugins.actions.owner(n) == "runtime_pm2" for n in kinds)
    # pm2 may start its daemon: none of them may hand it an action's memory limit.
    assert all(s is not None and s.limit_children is False for s in kinds.values())
    settings = DeploySettings.from_config(tmp_path, {"pm2_home": str(tmp_path / "pm2")})
    runtimes = load_runtimes(settings)
    assert isinstance(runtimes["pm2"], AgentRuntime)
    assert runtimes["pm2"].home == tmp_path / "pm2"  # type: ignore[attr-defined]


def test_jlist_of_a_fresh_pm2_home_with_its_banner(tmp_path: Path) -> None:
    require_node_and_pm2()
    with pm2_home(tmp_path) as home:
        out = subprocess.run(
            ["pm2", "jlist"],
            env={**os.environ, "PM2_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    assert "[PM2]" in out  # the banner a first call prints, before the JSON
    assert parse_jlist(out) == []
    with pytest.raises(Pm2Error):
        parse_jlist("[PM2] Spawning PM2 daemon\n")


def test_start_status_logs_restart_delete(runtime: AgentPm2, tmp_path: Path) -> None:
    script = tmp_path / "app.js"
    script.write_text(APP)
    port = free_port()
    node = shutil.which("node")
    assert node
    odd = ["a b", "$(touch pwned)", "; rm -rf /", "--flag"]
    os.environ["AGENT_SECRET"] = "must-not-leak"
    try:
        runtime.start(
            ReleaseProcess(
                "shop--r1",
                (node, str(script), *odd),
                tmp_path,
                {"PORT": str(port), "GREETING": "hi there", "PATH": "/usr/bin:/bin"},
            )
        )
    finally:
        del os.environ["AGENT_SECRET"]
    online = wait_for(
        lambda: [p for p in runtime.status("shop--") if p.status == "online" and p.pid],
        what="the process to be online",
    )
    assert [p.name for p in online] == ["shop--r1"]
    assert processes(runtime.home)["shop--r1"]["pid"] == online[0].pid
    logs = wait_for(lambda: len(runtime.logs("shop--r1")) >= 3 and runtime.logs("shop--r1"))
    assert f"argv {json.dumps(odd, separators=(',', ':'))}" in logs
    assert "secret none greeting hi there" in logs  # no shell, no agent environment
    assert "to stderr" in logs
    assert not (tmp_path / "pwned").exists()
    # Where app.logs reads: one file of JSON records, each chunk with its stream.
    (log_file,) = runtime.log_files("shop--r1")
    assert (log_file.path, log_file.format) == (runtime.log_path("shop--r1"), "json")
    records = [json.loads(line) for line in log_file.path.read_text().splitlines()]
    assert {"type": "err", "message": "to stderr\n"} in [
        {"type": r["type"], "message": r["message"]} for r in records
    ]

    runtime.restart("shop--r1")
    wait_for(
        lambda: [p for p in runtime.status("shop--r1") if p.pid and p.pid != online[0].pid],
        what="a new pid after restart",
    )
    runtime.stop("shop--r1")
    assert [p.status for p in runtime.status("shop--r1")] == ["stopped"]
    runtime.delete("shop--r1")
    runtime.delete("shop--r1")  # deleting what is gone is fine
    assert runtime.status("") == []
    assert not runtime.log_path("shop--r1").exists()
    assert not runtime.ecosystem_path("shop--r1").exists()
    assert runtime.log_files("shop--r1") == []


def test_status_without_a_daemon_starts_none(tmp_path: Path) -> None:
    require_node_and_pm2()
    home = tmp_path / "pm2"
    assert AgentPm2(home).status("") == []
    assert not (home / "pm2.pid").exists()
    with pytest.raises(Pm2Error, match="no PM2 process named x"):
        AgentPm2(home).restart("x")
