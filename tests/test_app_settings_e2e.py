"""App settings end to end (docs/deploys.md): the repository's default branch, a remembered
`deploy --branch`, `apps update`, config releases of env changes, `ps:scale`.

The same stack as test_deploy_e2e (its `world` fixture): the control plane, a real agent,
real pm2, real nginx; each test deploys its own app from a repository built here.
"""

from __future__ import annotations

from typing import Any

from serverflow_testkit import wait_for
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.pm2 import processes
from tests.test_deploy_e2e import RequestLoop, World
from tests.test_deploy_e2e import world as world  # the stack, one per module

# The testkit's node app, saying its version and its GREETING variable.
SERVER_JS = """
const http = require("http");
const fs = require("fs");
const version = fs.readFileSync(__dirname + "/version.txt", "utf8").trim();
http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  if (req.url === "/healthz") return res.end("ok\\n");
  res.end(`${version} greeting=${process.env.GREETING || "-"} pid ${process.pid}\\n`);
}).listen(Number(process.env.PORT));
"""

WORKER_JS = """
setInterval(() => {}, 1000);
"""


def _create(world: World, name: str, repo: GitRepo, *extra: str) -> str:
    domain = f"{name}.settings.test"
    world.cli(
        "apps",
        "create",
        name,
        "--server",
        "web-1",
        "--repo",
        repo.url,
        "--domain",
        domain,
        "--health-path",
        "/healthz",
        "--no-tls",
        *extra,
    )
    return domain


def _app(world: World, name: str) -> dict[str, Any]:
    return dict(world.api("GET", f"/apps/{name}").json())


def _fetch(world: World, domain: str) -> tuple[int, str]:
    answer = world.http(domain)
    return answer.status_code, answer.text


def _audit(world: World, action: str) -> list[dict[str, Any]]:
    return list(world.api("GET", f"/audit?action={action}&limit=500").json()["entries"])


def _log(world: World, deployment_id: str) -> list[dict[str, Any]]:
    return list(world.api("GET", f"/deployments/{deployment_id}/logs").json()["lines"])


def test_the_default_branch_then_a_remembered_deploy_branch(world: World) -> None:
    repo = GitRepo(world.base / "repos" / "legacy", branch="master")
    on_master = repo.commit("node", {"server.js": SERVER_JS, "version.txt": "master-v1"})
    domain = _create(world, "legacy", repo)
    listed = world.cli("apps", "list").stdout
    assert any(line.split()[:2] == ["legacy", "default"] for line in listed.splitlines()), listed

    first = world.cli("deploy", "legacy", "--wait")
    assert "==> live" in first.stdout, first.stdout + first.stderr
    assert "the default branch is master" in first.stdout
    deployed = world.latest("legacy")
    assert deployed["branch"] == "master" and deployed["commit_sha"] == on_master
    assert "master-v1" in world.http(domain).text
    app = _app(world, "legacy")
    assert app["branch"] is None and app["default_branch"] == "master"
    assert "default (master)" in world.cli("apps", "list").stdout

    # deploy --branch is remembered: the app follows that branch from now on.
    repo.create_branch("other")
    on_other = repo.commit(files={"version.txt": "other-v1"}, branch="other")
    moved = world.cli("deploy", "legacy", "--branch", "other", "--wait")
    assert "legacy now follows branch other (was default (master))" in moved.stdout
    assert "==> live" in moved.stdout, moved.stdout + moved.stderr
    assert world.latest("legacy")["branch"] == "other"
    assert world.latest("legacy")["commit_sha"] == on_other
    assert "other-v1" in world.http(domain).text
    assert _app(world, "legacy")["branch"] == "other"
    [changed] = [e for e in _audit(world, "app.branch_changed") if e["target"] == "app:legacy"]
    assert changed["details"] == {"from": None, "to": "other", "by": "deploy"}

    # A deploy without --branch takes the head of the branch it follows now.
    next_on_other = repo.commit(files={"version.txt": "other-v2"}, branch="other")
    again = world.cli("deploy", "legacy", "--wait")
    assert "now follows" not in again.stdout and "==> live" in again.stdout
    assert world.latest("legacy")["commit_sha"] == next_on_other


def test_apps_update_changes_settings_through_the_cli_and_the_api(world: World) -> None:
    repo = GitRepo(world.base / "repos" / "tuned")
    repo.commit("node", {"server.js": SERVER_JS, "version.txt": "tuned-v1"})
    _create(world, "tuned", repo, "--start", "node server.js")

    nothing = world.cli("apps", "update", "tuned", check=False)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    changed = world.cli(
        "apps",
        "update",
        "tuned",
        "--branch",
        "main",
        "--health-timeout",
        "30",
        "--build",
        "npm ci",
        "--domain",
        "tuned.settings.test",
        "--domain",
        "www.tuned.settings.test",
        "--tls",
        "--keep-releases",
        "3",
    ).stdout
    for line in (
        "branch: the repository's default branch -> main",
        "health_timeout_s: 60 -> 30",
        "build: detected -> npm ci",
        "domains: tuned.settings.test -> tuned.settings.test, www.tuned.settings.test",
        "tls: off -> on",
        "keep_releases: 5 -> 3",
        "it takes effect at the next deploy",
    ):
        assert line in changed, changed
    app = _app(world, "tuned")
    assert app["branch"] == "main" and app["health_timeout_s"] == 30 and app["tls"] is True
    assert app["build"] == [["npm", "ci"]] and app["keep_releases"] == 3

    # Back to detection and the default branch; the same settings again change nothing.
    cleared = world.cli("apps", "update", "tuned", "--detect-start", "--build", "", "--branch", "")
    assert "start: node server.js -> detected" in cleared.stdout, cleared.stdout
    assert "build: npm ci -> detected" in cleared.stdout
    assert "branch: main -> the repository's default branch" in cleared.stdout
    same = world.cli("apps", "update", "tuned", "--health-timeout", "30").stdout
    assert "nothing changed" in same
    app = _app(world, "tuned")
    assert app["start"] is None and app["build"] is None and app["branch"] is None

    # The API refuses what the CLI passes on unchecked; the app is unchanged.
    refused = world.cli("apps", "update", "tuned", "--health-timeout", "0", check=False)
    assert refused.returncode == 1 and "VAL001" in refused.stderr
    by_api = world.api("PATCH", "/apps/tuned", json={"runtime": "nope"})
    assert by_api.status_code == 400 and by_api.json()["error"]["code"] == "APP002"
    assert _app(world, "tuned")["health_timeout_s"] == 30

    # Every change, and every refusal, is in the audit log (newest first).
    ids = {app["id"], "tuned"}
    updates = [
        e
        for e in _audit(world, "api.update_app")
        if e["details"].get("path_args", {}).get("app_id") in ids
    ]
    assert [e["outcome"] for e in updates] == ["APP002", "VAL001", "ok", "ok", "ok"]
    assert updates[0]["details"]["body"] == {"runtime": "nope"}
    assert updates[-1]["details"]["body"]["health_timeout_s"] == 30


def test_an_env_change_is_a_config_release_with_no_build_and_no_failed_request(
    world: World,
) -> None:
    repo = GitRepo(world.base / "repos" / "conf")
    built = repo.commit("node", {"server.js": SERVER_JS, "version.txt": "conf-v1"})
    domain = _create(world, "conf", repo)
    assert "==> live" in world.cli("deploy", "conf", "--wait").stdout
    live = world.latest("conf")
    # The branch head moves to a commit that cannot start: a config release must not take it.
    repo.commit("node_crash", message="broken head")

    with RequestLoop(lambda: _fetch(world, domain)) as loop:
        changed = world.cli("apps", "env", "conf", "GREETING=bonjour", "--wait")
        wait_for(lambda: loop.bodies and "greeting=bonjour" in loop.bodies[-1], 30, "new env")
    assert "GREETING=********" in changed.stdout
    assert "config deployment #2 of " + built[:12] in changed.stdout, changed.stdout
    assert "==> live" in changed.stdout, changed.stdout + changed.stderr
    assert loop.failures == [] and len(loop.bodies) > 10
    assert all("conf-v1" in body for body in loop.bodies)

    config = world.latest("conf")
    assert config["kind"] == "config" and config["status"] == "live"
    assert config["commit_sha"] == built and config["branch"] == live["branch"] == "main"
    assert config["release"] != live["release"]
    lines = _log(world, config["id"])
    assert not [line for line in lines if line["stage"] in ("build", "sync")], lines
    reused = f"commit {built[:12]} is already built (release {live['release']})"
    assert any(reused in line["line"] for line in lines), [line["line"] for line in lines]
    # The API answer of the change listed that deployment.
    queued = world.api("PUT", "/apps/conf/env", json={"unset": ["GREETING"]}).json()
    [next_config] = queued["deployments"]
    assert next_config["kind"] == "config" and next_config["commit_sha"] == built
    done = world.wait_finished("conf", next_config["number"])
    assert done["status"] == "live"
    wait_for(lambda: "greeting=-" in world.http(domain).text, 30, "GREETING unset")


def test_ps_scale_runs_extra_process_types_at_once(world: World) -> None:
    repo = GitRepo(world.base / "repos" / "jobs")
    procfile = "web: node server.js\nworker: node worker.js\nclock: node worker.js\n"
    files = {"server.js": SERVER_JS, "worker.js": WORKER_JS, "Procfile": procfile}
    repo.commit("node", {**files, "version.txt": "jobs-v1"})
    _create(world, "jobs", repo)
    assert "==> live" in world.cli("deploy", "jobs", "--wait").stdout

    def running(kind: str) -> list[str]:
        release = world.latest("jobs")["release"]
        prefix = f"jobs--{release}--{kind}-"
        found = processes(world.pm2)
        return sorted(
            n for n, p in found.items() if n.startswith(prefix) and p["status"] == "online"
        )

    assert len(running("worker")) == 1 and len(running("clock")) == 1  # 1 each by default

    refused = world.cli("ps:scale", "jobs", "web=2", check=False)
    assert refused.returncode == 1 and "[APP007] web cannot be scaled" in refused.stderr
    bad = world.cli("ps:scale", "jobs", "worker=lots", check=False)
    assert bad.returncode == 2 and "TYPE=COUNT" in bad.stderr
    too_many = world.cli("ps:scale", "jobs", "worker=21", check=False)
    assert too_many.returncode == 1 and "VAL001" in too_many.stderr
    assert _app(world, "jobs")["formation"] == {}

    scaled = world.cli("ps:scale", "jobs", "worker=2", "clock=0", "--wait")
    assert "jobs: clock=0 worker=2" in scaled.stdout
    assert "==> live" in scaled.stdout, scaled.stdout + scaled.stderr
    assert world.latest("jobs")["kind"] == "config"
    assert running("worker") == [
        f"jobs--{world.latest('jobs')['release']}--worker-{i}" for i in (1, 2)
    ]
    assert running("clock") == []
    assert "[clock=0 worker=2]" in world.cli("apps", "list").stdout
    assert world.cli("ps:scale", "jobs").stdout.strip() == "clock=0 worker=2"
