"""The reconciler (`state.apply`) against real git repositories, real npm/pip and real PM2.

Each test drives serverflow_agent.deploy.reconcile directly with desired-state documents
on a temporary state dir, and checks what a user would see: the app answering on its
port, PM2's own process list, the files on disk, and the progress lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serverflow_agent.deploy.detect import DOCKERFILE_ERROR
from serverflow_testkit import free_port, wait_for
from serverflow_testkit.deploy import LocalDeploys, document, entry, get, refused
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.nginx import start_nginx, world_readable_dir
from serverflow_testkit.pm2 import pm2_home, processes, require_node_and_pm2


@pytest.fixture
def deploys(tmp_path: Path) -> Iterator[LocalDeploys]:
    require_node_and_pm2()
    with pm2_home(tmp_path) as home:
        yield LocalDeploys.create(tmp_path, home)


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "shop-repo")


def live(result: dict, app: str = "shop") -> dict:
    outcome = result["apps"][app]
    assert outcome["status"] == "live", outcome
    return outcome


def failed(result: dict, app: str = "shop") -> dict:
    outcome = result["apps"][app]
    assert outcome["status"] == "failed", outcome
    return outcome


def test_deploy_redeploy_and_idempotency(deploys: LocalDeploys, repo: GitRepo) -> None:
    c1 = repo.commit("node", message="v1")
    doc1 = document(1, [entry("shop", repo.url, c1, "r1")])
    first = live(deploys.apply_document(doc1))
    assert first["commit"] == c1
    port1 = first["port"]
    low, high = deploys.settings.port_range
    assert low <= port1 <= high
    status, body = get(port1)
    assert status == 200 and body.startswith("hello from v1"), body
    procs = processes(deploys.pm2_home)
    assert procs["shop--r1"]["status"] == "online"
    pid1 = procs["shop--r1"]["pid"]
    assert f"pid {pid1}" in body  # PM2 supervises the app's own process, no npm between
    build = deploys.stages("shop", "build")
    assert "$ npm ci" in build and any("added 1 package" in line for line in build)
    app_dir = deploys.app_dir("shop")
    assert os.readlink(app_dir / "current") == "releases/r1"

    # The same document again: nothing happens.
    again = deploys.apply_document(doc1)
    assert again["changed"] is False
    assert again["apps"]["shop"]["status"] == "unchanged"
    assert not deploys.stages("shop", "build") and not deploys.stages("shop", "start")
    assert processes(deploys.pm2_home)["shop--r1"]["pid"] == pid1

    # A new commit, lockfile unchanged: node_modules comes from the cache.
    c2 = repo.commit(files={"version.txt": "v2\n"}, message="v2")
    second = live(deploys.apply_document(document(2, [entry("shop", repo.url, c2, "r2")])))
    build = deploys.stages("shop", "build")
    assert "$ npm ci" not in build, deploys.log()
    assert any("from the cache" in line for line in build)
    port2 = second["port"]
    assert port2 != port1
    status, body = get(port2)
    assert body.startswith("hello from v2")
    procs = processes(deploys.pm2_home)
    assert set(procs) == {"shop--r2"} and procs["shop--r2"]["status"] == "online"
    assert refused(port1)  # the old release was stopped after the switch
    assert os.readlink(app_dir / "current") == "releases/r2"
    assert (app_dir / "releases" / "r2" / "node_modules").is_symlink()


def test_broken_commits_leave_the_old_release_serving(deploys: LocalDeploys, repo: GitRepo) -> None:
    c1 = repo.commit("node")
    port = live(deploys.apply(entry("shop", repo.url, c1, "r1")))["port"]
    pid = processes(deploys.pm2_home)["shop--r1"]["pid"]

    crash = repo.commit("node_crash", message="crashes on start")
    outcome = failed(deploys.apply(entry("shop", repo.url, crash, "r2")))
    assert "crashed on start" in outcome["reason"], outcome
    assert any("DATABASE_URL is not set" in line for line in outcome["log_tail"]), outcome
    assert outcome["serving"] == {"release": "r1", "port": port}
    assert processes(deploys.pm2_home) == {
        "shop--r1": {"pid": pid, "status": "online", "restarts": 0}
    }
    assert get(port)[1].startswith("hello from v1")

    sick = repo.commit("node_unhealthy", message="fails its health check")
    unhealthy = entry("shop", repo.url, sick, "r3", health={"path": "/healthz", "timeout_s": 3})
    outcome = failed(deploys.apply(unhealthy))
    assert outcome["reason"].startswith("health check failed: GET /healthz answered 500"), outcome
    assert any("database unreachable" in line for line in outcome["log_tail"]), outcome
    assert set(processes(deploys.pm2_home)) == {"shop--r1"}
    assert processes(deploys.pm2_home)["shop--r1"]["pid"] == pid
    assert get(port)[1].startswith("hello from v1")
    assert os.readlink(deploys.app_dir("shop") / "current") == "releases/r1"

    # A build that fails: the old release is untouched too.
    bad_build = entry("shop", repo.url, c1, "r4", build=[["node", "-e", "process.exit(3)"]])
    outcome = failed(deploys.apply(bad_build))
    assert "failed (exit status 3)" in outcome["reason"]
    assert not (deploys.app_dir("shop") / "releases" / "r4").exists()
    assert processes(deploys.pm2_home)["shop--r1"]["pid"] == pid


def test_rollback_reuses_a_kept_release_without_building(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    c1 = repo.commit("node")
    live(deploys.apply(entry("shop", repo.url, c1, "r1")))
    c2 = repo.commit(files={"version.txt": "v2\n"})
    live(deploys.apply(entry("shop", repo.url, c2, "r2")))

    back = live(deploys.apply(entry("shop", repo.url, c1, "r1")))
    assert get(back["port"])[1].startswith("hello from v1")
    assert not deploys.stages("shop", "build"), deploys.log()
    assert not deploys.stages("shop", "sync"), deploys.log()
    assert any("already built" in line for line in deploys.stages("shop", "checkout"))
    assert set(processes(deploys.pm2_home)) == {"shop--r1"}


def test_fixed_port(deploys: LocalDeploys, repo: GitRepo) -> None:
    c1 = repo.commit("node")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    try:
        outcome = failed(deploys.apply(entry("shop", repo.url, c1, "r1", port=busy)))
        assert outcome["reason"] == f"port {busy} is already in use"
        assert processes(deploys.pm2_home) == {}
        assert not deploys.stages("shop", "build")  # refused before building anything
    finally:
        taken.close()

    # A fixed port nobody holds: v1, then v2 on the same port (the old one stops first),
    # then a broken v3: v2 is started again on that port.
    low, high = deploys.settings.port_range
    fixed = next(p for p in iter(free_port, None) if not low <= p <= high)
    assert live(deploys.apply(entry("shop", repo.url, c1, "r1", port=fixed)))["port"] == fixed
    c2 = repo.commit(files={"version.txt": "v2\n"})
    assert live(deploys.apply(entry("shop", repo.url, c2, "r2", port=fixed)))["port"] == fixed
    assert get(fixed)[1].startswith("hello from v2")
    crash = repo.commit("node_crash")
    failed(deploys.apply(entry("shop", repo.url, crash, "r3", port=fixed)))
    assert any("again" in line for line in deploys.stages("shop", "rollback"))
    wait_for(lambda: not refused(fixed), what="v2 back on its port")
    assert get(fixed)[1].startswith("hello from v2")
    assert set(processes(deploys.pm2_home)) == {"shop--r2"}


def test_unknown_repository_and_commit_fail_clearly(
    deploys: LocalDeploys, repo: GitRepo, tmp_path: Path
) -> None:
    c1 = repo.commit("node")
    nowhere = str(tmp_path / "no-such-repo")
    outcome = failed(deploys.apply(entry("shop", nowhere, c1, "r1")))
    assert outcome["reason"].startswith(f"cannot clone {nowhere}"), outcome
    assert outcome["reason"].endswith(f"repository {nowhere!r} does not exist")

    unknown = "0" * 40
    outcome = failed(deploys.apply(entry("shop", repo.url, unknown, "r1")))
    assert outcome["reason"] == f"commit {unknown} does not exist in {repo.url}"
    assert processes(deploys.pm2_home) == {}


def test_refused_repository_urls_never_reach_git(deploys: LocalDeploys, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for url, why in (
        (f"ext::sh -c touch% {marker}", "remote helpers"),
        ("--upload-pack=touch /tmp/x", "starts with '-'"),
        ("fd::3", "remote helpers"),
        ("gopher://example.com/repo", "gopher:// scheme is not supported"),
        ("relative/path", "absolute path"),
    ):
        outcome = failed(deploys.apply(entry("shop", url, "a" * 40, "r1")))
        assert why in outcome["reason"], outcome
    assert not marker.exists()
    assert not (deploys.app_dir("shop") / "repo.git").exists()


def test_dockerfile_app_needs_the_docker_runtime(deploys: LocalDeploys, repo: GitRepo) -> None:
    commit = repo.commit("docker")
    outcome = failed(deploys.apply(entry("shop", repo.url, commit, "r1")))
    assert outcome["reason"] == DOCKERFILE_ERROR
    assert not (deploys.app_dir("shop") / "releases" / "r1").exists()


def test_python_app_with_cached_virtualenv(deploys: LocalDeploys, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "py-repo")
    c1 = repo.commit("python")
    first = live(deploys.apply(entry("api", repo.url, c1, "r1", env={})), "api")
    status, body = get(first["port"])
    assert status == 200 and body.startswith("python v1"), body
    # It runs in the release's .venv, a link to the virtualenv cached for requirements.txt.
    venv = deploys.app_dir("api") / "releases" / "r1" / ".venv"
    assert body.strip().endswith(str(venv))
    assert venv.resolve().parent.parent == deploys.settings.cache_dir / "python"
    assert any("$ " in line and "-m venv" in line for line in deploys.stages("api", "build"))

    c2 = repo.commit(files={"version.txt": "v2\n"})
    second = live(deploys.apply(entry("api", repo.url, c2, "r2", env={})), "api")
    assert get(second["port"])[1].startswith("python v2")
    build = deploys.stages("api", "build")
    assert not any("-m venv" in line for line in build), deploys.log()
    assert any("virtualenv from the cache" in line for line in build)


def test_static_site_runs_no_process(deploys: LocalDeploys, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "site-repo")
    commit = repo.commit("static")
    outcome = live(deploys.apply(entry("site", repo.url, commit, "r1")), "site")
    assert outcome["port"] is None and outcome["process"] is None
    current = deploys.app_dir("site") / "current"
    assert "static v1" in (current / "index.html").read_text()
    assert processes(deploys.pm2_home) == {}


def test_pm2_restarts_a_killed_app(deploys: LocalDeploys, repo: GitRepo) -> None:
    c1 = repo.commit("node")
    port = live(deploys.apply(entry("shop", repo.url, c1, "r1")))["port"]
    pid = processes(deploys.pm2_home)["shop--r1"]["pid"]
    os.kill(pid, signal.SIGKILL)

    def restarted() -> int | None:
        proc = processes(deploys.pm2_home)["shop--r1"]
        if proc["pid"] and proc["pid"] != pid and proc["status"] == "online":
            return int(proc["pid"])
        return None

    new_pid = wait_for(restarted, what="PM2 to restart the app")
    wait_for(lambda: not refused(port), what="the app to listen again")
    assert get(port)[1] == f"hello from v1 pid {new_pid}\n"


def test_removed_app_is_stopped_and_others_stay(deploys: LocalDeploys, tmp_path: Path) -> None:
    shop, blog = GitRepo(tmp_path / "shop"), GitRepo(tmp_path / "blog")
    s1, b1 = shop.commit("node"), blog.commit("node", files={"version.txt": "blog\n"})
    # No health path: the port accepting connections is the health check.
    blog_entry = entry("blog", blog.url, b1, "r1", health=None)
    result = deploys.apply(entry("shop", shop.url, s1, "r1"), blog_entry)
    shop_port, blog_port = live(result, "shop")["port"], live(result, "blog")["port"]
    assert deploys.stages("blog", "health")[0].startswith("health check: waiting for a connection")
    assert shop_port != blog_port
    blog_pid = processes(deploys.pm2_home)["blog--r1"]["pid"]

    result = deploys.apply(blog_entry)
    assert result["apps"]["shop"]["status"] == "removed"
    assert result["apps"]["blog"]["status"] == "unchanged", (result, deploys.log())
    assert processes(deploys.pm2_home) == {
        "blog--r1": {"pid": blog_pid, "status": "online", "restarts": 0}
    }
    assert refused(shop_port)
    assert get(blog_port)[1].startswith("hello from blog")


def test_old_releases_are_pruned(deploys: LocalDeploys, repo: GitRepo) -> None:
    releases = deploys.app_dir("shop") / "releases"
    for n in range(1, 5):
        commit = repo.commit("node", files={"version.txt": f"v{n}\n"})
        live(deploys.apply(entry("shop", repo.url, commit, f"r{n}", keep_releases=2)))
    assert sorted(p.name for p in releases.iterdir()) == ["r3", "r4"]
    assert sorted(p.name for p in (deploys.app_dir("shop") / "meta").iterdir()) == [
        "r3.json",
        "r4.json",
    ]


def test_agent_killed_mid_deploy_leaves_the_old_release(
    deploys: LocalDeploys, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real action runner, SIGKILLed while it builds: `current`, the state and the
    serving release are the old ones, and the next apply succeeds."""
    from serverflow_agent.config import AgentConfig

    AgentConfig(
        url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9/agent/ws",
        server_id="srv-1",
        org_id="org-1",
        control_plane_key="A" * 43,
        deploy={
            "pm2_home": str(deploys.pm2_home),
            "port_range": list(deploys.settings.port_range),
            "drain_seconds": 0,
        },
    ).save(deploys.state_dir)
    c1 = repo.commit("node")
    port = live(deploys.apply(entry("shop", repo.url, c1, "r1")))["port"]
    c2 = repo.commit(files={"version.txt": "v2\n"})
    slow = entry("shop", repo.url, c2, "r2", build=[["sleep", "60"]])
    started = document(deploys.version + 1, [slow])
    runner = subprocess.Popen(
        [sys.executable, "-m", "serverflow_agent.runner"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "SERVERFLOW_AGENT_STATE_DIR": str(deploys.state_dir)},
        start_new_session=True,
    )
    assert runner.stdin is not None
    runner.stdin.write(
        json.dumps(
            {"handler": "serverflow_agent.deploy.reconcile:apply", "params": started}
        ).encode()
    )
    runner.stdin.close()
    release_dir = deploys.app_dir("shop") / "releases" / "r2"
    wait_for(release_dir.exists, what="the build to start")
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()

    current = deploys.app_dir("shop") / "current"
    assert os.readlink(current) == "releases/r1"
    assert (current / "server.js").exists()
    assert get(port)[1].startswith("hello from v1")
    assert not (deploys.app_dir("shop") / "meta" / "r2.json").exists()

    # Through the handler itself (settings from agent.json), as the agent runs it.
    from serverflow_agent.deploy import reconcile

    monkeypatch.setenv("SERVERFLOW_AGENT_STATE_DIR", str(deploys.state_dir))
    result = reconcile.apply(document(deploys.version + 2, [entry("shop", repo.url, c2, "r2")]))
    assert get(live(result)["port"])[1].startswith("hello from v2")
    assert os.readlink(current) == "releases/r2"


def test_document_with_a_wrong_hash_is_refused(deploys: LocalDeploys, repo: GitRepo) -> None:
    from serverflow_agent.deploy.reconcile import DocumentError

    doc = document(1, [entry("shop", repo.url, "a" * 40, "r1")])
    doc["apps"][0]["release"] = "r2"  # changed after hashing
    with pytest.raises(DocumentError, match="hash does not match"):
        deploys.apply_document(doc)
    assert not deploys.app_dir("shop").exists()


def test_same_document_brings_back_what_stopped_running(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    """An applied document is a no-op only while its apps run: after PM2's daemon is
    gone (as after a reboot), the same document starts them again, without a build."""
    c1 = repo.commit("node")
    doc = document(1, [entry("shop", repo.url, c1, "r1")])
    port = live(deploys.apply_document(doc))["port"]
    subprocess.run(
        ["pm2", "kill"],
        env={**os.environ, "PM2_HOME": str(deploys.pm2_home)},
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert refused(port)
    again = deploys.apply_document(doc)
    assert again["changed"] is True
    assert get(live(again)["port"])[1].startswith("hello from v1")
    assert not deploys.stages("shop", "build") and not deploys.stages("shop", "sync")
    assert deploys.apply_document(doc)["changed"] is False


def test_git_errors_do_not_show_credentials() -> None:
    from serverflow_agent.deploy import git

    url = "https://deploy:s3cr3t-token@127.0.0.1:9/shop.git"
    for params in ({"repo": url, "branch": "main"}, {"repo": url}):  # without: the default
        with pytest.raises(git.GitError) as caught:
            git.resolve(params)
        message = str(caught.value)
        assert message.startswith(
            "cannot read the repository https://deploy:***@127.0.0.1:9/shop.git"
        )
        assert "s3cr3t" not in message


def test_new_settings_for_the_same_release_switch_without_a_gap(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    c1 = repo.commit("node")
    first = live(deploys.apply(entry("shop", repo.url, c1, "r1")))
    changed = entry("shop", repo.url, c1, "r1", env={"NODE_ENV": "production", "FEATURE": "on"})
    second = live(deploys.apply(changed))
    assert second["process"] == "shop--r1-b" and second["port"] != first["port"]
    assert not deploys.stages("shop", "build")  # same release: its build is reused
    assert set(processes(deploys.pm2_home)) == {"shop--r1-b"}
    assert get(second["port"])[1].startswith("hello from v1")
    third = live(deploys.apply(entry("shop", repo.url, c1, "r1")))
    assert third["process"] == "shop--r1"
    assert set(processes(deploys.pm2_home)) == {"shop--r1"}


ESCAPER = """
import http.server, os, time
port = int(os.environ["PORT"])
if os.fork() == 0:  # a daemon that serves the port, outside the supervised process tree
    os.setsid()
    if os.fork() == 0:
        handler = http.server.SimpleHTTPRequestHandler
        http.server.HTTPServer(("127.0.0.1", port), handler).serve_forever()
    os._exit(0)
time.sleep(3600)
"""


def test_health_answer_must_come_from_the_new_release(
    deploys: LocalDeploys, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "site-repo")
    commit = repo.commit("static")
    app = entry(
        "odd", repo.url, commit, "r1", start=["python3", "-c", ESCAPER], health={"path": "/"}
    )
    outcome = failed(deploys.apply(app), "odd")
    match = re.match(r"port (\d+) answers, but not from the new release", outcome["reason"])
    assert match, outcome
    port = int(match.group(1))
    try:
        assert processes(deploys.pm2_home) == {}
    finally:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.pid:
                os.kill(conn.pid, signal.SIGKILL)


def test_a_public_port_is_the_apps_address_across_releases(tmp_path: Path, repo: GitRepo) -> None:
    """The proxy listens on the app's public port and switches it to each new release (on
    a fresh port of its own); a removed app's port can be another's in the same document."""
    require_node_and_pm2()
    base = world_readable_dir("sf-reconcile-nginx-")
    nginx = start_nginx(base)
    try:
        with pm2_home(tmp_path) as home:
            deploys = LocalDeploys.create(
                tmp_path,
                home,
                nginx=nginx.config_section(tmp_path / "certs"),
                public_address="203.0.113.7",
            )
            public = free_port()
            c1 = repo.commit("node")
            result = deploys.apply(entry("shop", repo.url, c1, "r1", public_port=public))
            first = live(result)
            assert first["public_port"] == public and first["port"] != public
            assert result["address"] == "203.0.113.7"
            assert f"switching the proxy: port {public}" in deploys.stages("shop", "proxy")
            assert get(public)[1].startswith("hello from v1")

            c2 = repo.commit(files={"version.txt": "v2\n"})
            second = live(deploys.apply(entry("shop", repo.url, c2, "r2", public_port=public)))
            assert second["public_port"] == public and second["port"] != first["port"]
            assert get(public)[1].startswith("hello from v2")
            assert refused(first["port"])

            # shop goes, blog comes with its port: shop's proxy file goes first.
            blog = GitRepo(tmp_path / "blog")
            b1 = blog.commit("node", files={"version.txt": "blog\n"})
            result = deploys.apply(entry("blog", blog.url, b1, "r1", public_port=public))
            assert result["apps"]["shop"]["status"] == "removed"
            assert live(result, "blog")["public_port"] == public
            assert get(public)[1].startswith("hello from blog")
            assert not (nginx.conf_dir / "shop.conf").exists()

            deploys.apply()
            assert refused(public)
    finally:
        nginx.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_without_nginx_an_app_runs_on_its_release_port_only(tmp_path: Path, repo: GitRepo) -> None:
    """A server where nginx is not set up (no conf dir): the app still goes live, as before
    public ports, and the outcome says it has none."""
    require_node_and_pm2()
    with pm2_home(tmp_path) as home:
        missing = tmp_path / "no-nginx" / "conf.d"
        deploys = LocalDeploys.create(tmp_path, home, nginx={"conf_dir": str(missing)})
        public = free_port()
        result = deploys.apply(
            entry("shop", repo.url, repo.commit("node"), "r1", public_port=public)
        )
        outcome = live(result)
        assert outcome["public_port"] is None
        assert get(outcome["port"])[1].startswith("hello from v1")
        assert refused(public)
        [note] = deploys.stages("shop", "proxy")
        assert note.startswith("no stable address for the app on this server: nginx is not set")
        assert not missing.exists()
        assert result["address"] is None  # no agent.json to find the control plane in
