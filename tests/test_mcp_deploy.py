"""A whole deploy through MCP: dry run (nothing changes on the server), apply with a token
that may apply plans, the app goes live; then a planned restart. Real control plane, real
agent with its deploy engine, real git repository, node and PM2.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from serverflow_testkit import missing
from serverflow_testkit.controlplane import bootstrap
from serverflow_testkit.deploy import deploy_settings, get
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.pm2 import pm2_home, processes, require_node_and_pm2
from tests.test_mcp import RealAgent, call, new_token, ok, wait_for


async def test_deploy_dry_run_apply_goes_live_then_restart(tmp_path: Path) -> None:
    require_node_and_pm2()
    repo = GitRepo(tmp_path / "shop-repo")
    commit = repo.commit("node")
    dep = bootstrap(tmp_path / "data")
    try:
        with pm2_home(tmp_path) as home:
            agent = RealAgent(
                dep, tmp_path, "web-1", None, deploy=deploy_settings(tmp_path / "state", home)
            )
            try:
                await _deploy(dep, agent, repo, commit, home)
            finally:
                agent.stop()
    finally:
        dep.cp.stop()


async def _deploy(dep: Any, agent: RealAgent, repo: GitRepo, commit: str, home: Path) -> None:
    with dep.http() as api:
        offered = {a["name"] for a in api.get(f"/servers/{agent.id}/actions").json()["actions"]}
        if "state.apply" not in offered:
            missing("the agent's deploy engine", "the agent offers no state.apply action")
        app = {
            "name": "shop",
            "repo": repo.url,
            "servers": ["web-1"],
            "health_path": "/healthz",
            "tls": False,
            "env": {"GREETING_SECRET": "do-not-show"},
        }
        assert api.post("/apps", json=app).status_code == 201
    member, applier = dep.tokens["member"], new_token(dep, "acme", "assistant", "member", True)

    planned = ok(await call(dep, member, "deploy_app", {"app": "shop"}))
    server = planned["preview"]["servers"][0]
    assert server["current"] is None  # nothing live yet...
    assert server["target"] == {"branch": "main", "commit": commit, "release": f"r1-{commit[:7]}"}
    assert planned["preview"]["resolution"] == "main (the default branch) resolved on web-1"
    shop = next(a for a in server["desired_state"]["apps"] if a["name"] == "shop")
    assert shop["env"] == {"GREETING_SECRET": "********"} and shop["commit"] == commit
    assert [c["action"] for c in server["commands"]] == ["state.apply"]
    # ...and the dry run changed nothing: no deployment, no state.apply, no process.
    with dep.http() as api:
        assert api.get("/apps/shop/deployments").json()["deployments"] == []
    assert agent.commands("state.apply") == [] and processes(home) == {}

    applied = ok(await call(dep, applier, "apply_plan", {"plan_id": planned["plan_id"]}))
    assert applied["result"]["deployments"][0]["server"] == "web-1"

    async def live() -> dict[str, Any] | None:
        got = ok(await call(dep, member, "get_app", {"app": "shop"}))
        latest = got["recent_deployments"][0]
        assert latest["status"] in ("queued", "running", "live"), latest
        return got["servers"][0]["live"]

    deadline = time.monotonic() + 300
    while (release := await live()) is None:
        assert time.monotonic() < deadline, "the deploy did not go live"
        await asyncio.sleep(0.5)
    assert release["commit"] == commit and release["release"] == f"r1-{commit[:7]}"
    apply_output = agent.commands("state.apply")[0]["output"]
    port = apply_output["apps"]["shop"]["port"]
    status, body = get(port)
    assert status == 200 and "v1" in body, body
    logs = ok(await call(dep, member, "get_app_logs", {"app": "shop", "lines": 1000}))
    assert any("health" in line for line in logs["lines"]), logs
    printed = ok(await call(dep, member, "get_app_output", {"app": "shop", "lines": 50}))
    assert any(
        line["type"] == "web" and line["line"] == f"listening on {port}"
        for line in printed["lines"]
    ), printed

    # A restart is planned too, then applied: the runtime's signed command runs.
    restart = ok(await call(dep, member, "restart_app", {"app": "shop"}))
    command = restart["preview"]["commands"][0]
    assert command["server"] == "web-1" and command["action"] == "pm2.restart"
    before = wait_for(lambda: processes(home), 10, "the pm2 process")
    restarted = ok(await call(dep, applier, "apply_plan", {"plan_id": restart["plan_id"]}))
    assert restarted["result"]["commands"][0]["status"] == "ok"
    after = processes(home)
    name = next(iter(before))
    assert (
        after[name]["restarts"] > before[name]["restarts"]
        or after[name]["pid"] != before[name]["pid"]
    )
    assert get(port)[0] == 200
