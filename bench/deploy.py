"""How long a deploy takes, from the request to "healthy".

    .venv/bin/python bench/deploy.py

A real control plane, a real agent, real pm2 (no proxy: the apps have no domain, so the
figures are the pipeline itself). Measures, for the tiny Node and Python apps of the test
kit (testkit/serverflow_testkit/apps): the first deploy with nothing cached (fresh npm
cache, no dependency cache on the agent), a first deploy of another app whose dependencies
are already cached, a redeploy (new commit, unchanged lockfile) and a config release (an
env change: same commit, the build reused). Prints each figure
beside its target; the last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from serverflow_testkit.controlplane import Deployment, bootstrap
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.pm2 import pm2_home
from serverflow_testkit.protocol_peer import AgentProcess, register_agent


def timed_deploy(dep: Deployment, app: str, env: dict[str, str] | None = None) -> float:
    """Seconds from POST .../deploy (or, with `env`, PUT .../env: a config release) to the
    deployment being live."""
    with dep.http() as http:
        started = time.perf_counter()
        if env is None:
            queued = http.post(f"/apps/{app}/deploy", json={})
        else:
            queued = http.put(f"/apps/{app}/env", json={"set": env})
        queued.raise_for_status()
        deployment_id = queued.json()["deployments"][0]["id"]
        while True:
            row = http.get(f"/deployments/{deployment_id}").json()
            if row["status"] == "live":
                return time.perf_counter() - started
            if row["status"] == "failed":
                raise RuntimeError(f"{app}: {row['reason']}")
            time.sleep(0.05)


def main() -> int:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sf-bench-deploy-") as tmp:
        base = Path(tmp)
        with pm2_home(base) as pm2:
            dep = bootstrap(base / "data", env={"SERVERFLOW_HEARTBEAT_INTERVAL_MS": "1000"})
            agent = None
            try:
                with dep.http() as http:
                    made = http.post("/servers", json={"name": "bench-1"}).json()
                state = base / "agent"
                deploy = {
                    "apps_dir": str(base / "apps"),
                    "cache_dir": str(base / "cache"),
                    "pm2_home": str(pm2),
                    "port_range": [25000, 25100],
                    "drain_seconds": 2,
                }
                register_agent(dep.url, made["install"]["token"], state, deploy=deploy)
                env = {**os.environ, "npm_config_cache": str(base / "npm-cache")}
                agent = AgentProcess(state, env, base / "agent.log").start()
                deadline = time.monotonic() + 60
                while (
                    httpx.get(
                        f"{dep.url}/api/v1/servers/{made['id']}",
                        timeout=10,
                        headers={"Authorization": f"Bearer {dep.tokens['owner']}"},
                    ).json()["status"]
                    != "online"
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the agent did not come online")
                    time.sleep(0.1)

                repos = {}
                for name, sample in (
                    ("node-a", "node"),
                    ("node-b", "node"),
                    ("py-a", "python"),
                    ("py-b", "python"),
                ):
                    repo = GitRepo(base / "repos" / name)
                    repo.commit(sample, {"version.txt": "v1"}, message="v1")
                    repos[name] = (repo, sample)
                    dep.cli(
                        "apps",
                        "create",
                        name,
                        "--server",
                        "bench-1",
                        "--repo",
                        repo.url,
                        "--health-path",
                        "/healthz",
                    )

                figures["node_first_cold_s"] = timed_deploy(dep, "node-a")
                figures["node_first_deps_cached_s"] = timed_deploy(dep, "node-b")
                repo, sample = repos["node-a"]
                repo.commit(sample, {"version.txt": "v2"}, message="v2")
                figures["node_redeploy_same_lockfile_s"] = timed_deploy(dep, "node-a")
                figures["node_config_release_s"] = timed_deploy(dep, "node-a", {"GREETING": "hi"})
                figures["python_first_cold_s"] = timed_deploy(dep, "py-a")
                figures["python_first_deps_cached_s"] = timed_deploy(dep, "py-b")
                repo, sample = repos["py-a"]
                repo.commit(sample, {"version.txt": "v2"}, message="v2")
                figures["python_redeploy_same_requirements_s"] = timed_deploy(dep, "py-a")
                figures["python_config_release_s"] = timed_deploy(dep, "py-a", {"GREETING": "hi"})
            finally:
                if agent is not None:
                    agent.stop()
                dep.cp.stop()

    rows = [
        ("Node: first deploy, nothing cached", "node_first_cold_s", "-"),
        ("Node: first deploy, dependencies cached", "node_first_deps_cached_s", "-"),
        ("Node: redeploy, unchanged lockfile", "node_redeploy_same_lockfile_s", "< 10 s"),
        ("Node: config release (env change, no build)", "node_config_release_s", "-"),
        ("Python: first deploy, nothing cached", "python_first_cold_s", "-"),
        ("Python: first deploy, dependencies cached", "python_first_deps_cached_s", "-"),
        ("Python: redeploy, unchanged requirements", "python_redeploy_same_requirements_s", "-"),
        ("Python: config release (env change, no build)", "python_config_release_s", "-"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, key, target in rows:
        print(f"{label:<{width}}  {figures[key]:>7.2f} s   target: {target}")
    print("(request to healthy, including the 2 s drain of the old release on redeploys)")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
