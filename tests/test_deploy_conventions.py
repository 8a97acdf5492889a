"""Apps deployed as their authors wrote them (docs/deploys.md): Procfile process types, the
release phase, interpreter versions, Django's conventions, health checks with the app's
Host, config releases that reuse a build.

Real git repositories built here, the real reconciler, real npm/pip (Django and gunicorn
from PyPI), real PM2 and a real nginx in front.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverflow_agent.deploy import procfile
from serverflow_agent.deploy.desired import DeployError, parse_app
from serverflow_testkit import wait_for
from serverflow_testkit.deploy import LocalDeploys, entry, get
from serverflow_testkit.gitrepo import APPS, GitRepo
from serverflow_testkit.nginx import NginxServer, start_nginx, world_readable_dir
from serverflow_testkit.pm2 import pm2_home, processes, require_node_and_pm2

PYTHON = ".".join(map(str, sys.version_info[:2]))


@pytest.fixture(scope="module")
def nginx() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("sf-conv-nginx-"))
    yield server
    server.stop()


@pytest.fixture
def deploys(nginx: NginxServer) -> Iterator[LocalDeploys]:
    require_node_and_pm2()
    nginx.reset()
    base = world_readable_dir("sf-conv-")  # nginx's workers read the releases' static files
    with pm2_home(base) as home:
        yield LocalDeploys.create(base, home, nginx=nginx.config_section(base / "certs"))


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


def outcome(result: dict, status: str, app: str = "shop") -> dict:
    found = result["apps"][app]
    assert found["status"] == status, found
    return found


def through_nginx(nginx: NginxServer, host: str, path: str = "/") -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{nginx.http_port}{path}", headers={"Host": host}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


WORKER_JS = """
const fs = require("fs");
const out = process.env.TICKS;
setInterval(() => fs.appendFileSync(out, `${process.env.SERVERFLOW_PROCESS}\\n`), 100);
"""

MIGRATE_JS = """
const fs = require("fs");
fs.writeFileSync(process.env.MARKER, `migrated by ${process.env.SERVERFLOW_RELEASE}\\n`);
console.log("migrations applied");
"""

# Answers with what the release command left, read when it starts: proof it ran first.
MARKER_SERVER_JS = """
const http = require("http");
const fs = require("fs");
const file = process.env.MARKER;
const marker = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "none";
http.createServer((req, res) => res.end(`web from the Procfile; marker: ${marker}`))
  .listen(Number(process.env.PORT));
"""


# -- the Procfile ------------------------------------------------------------------------


def test_procfile_lines_are_argvs_never_shell_lines(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "# comment\n\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n"
        "worker: env-free python -m worker 'a b'\nrelease: WORKERS=2 ./manage.py migrate\n"
    )
    commands = procfile.read(tmp_path)
    assert list(commands) == ["web", "worker", "release"]
    argv, _ = commands["web"].resolve({"PORT": "4001"})
    assert argv == ("gunicorn", "app:app", "--bind", "0.0.0.0:4001")
    assert commands["worker"].argv[-1] == "a b"
    argv, assigned = commands["release"].resolve({})
    assert argv == ("./manage.py", "migrate") and assigned == {"WORKERS": "2"}
    # Like a shell: a word that is only an unset variable goes away.
    assert procfile.parse_command("app $UNSET --x", "t").resolve({})[0] == ("app", "--x")

    for line, why in (
        ("npm run build && npm start", "shell syntax"),
        ("node a.js | tee log", "shell syntax"),
        ("node a.js > out.log", "shell syntax"),
        ("node $(cat file)", "command substitution"),
    ):
        with pytest.raises(DeployError, match=why):
            procfile.parse_command(line, "the Procfile's web: line")
    assert procfile.parse_command("echo 'a && b'", "t").argv == ("echo", "a && b")
    for text, why in (
        ("web node a.js\n", "is not `<process type>: <command>`"),
        ("web: a\nweb: b\n", "appears twice"),
        ("web:\n", "has no command"),
        ("1web: a\n", "invalid process type"),
    ):
        (tmp_path / "Procfile").write_text(text)
        with pytest.raises(DeployError, match=why):
            procfile.read(tmp_path)


def test_formation_is_checked_per_app() -> None:
    good = entry("shop", "/srv/shop.git", "a" * 40, "r1")
    assert parse_app({**good, "formation": {"worker": 3}}).formation == {"worker": 3}
    for formation, why in (
        ({"worker": 21}, "worker must be a count from 0 to 20"),
        ({"worker": -1}, "worker must be a count"),
        ({"worker": True}, "worker must be a count"),
        ({"web": 2}, "web runs one process per server"),
        ({"bad-type": 1}, "invalid process type"),
        (["worker"], "formation must be an object"),
    ):
        with pytest.raises(DeployError, match=why):
            parse_app({**good, "formation": formation})


def test_node_procfile_web_wins_and_workers_run_scaled(
    deploys: LocalDeploys, repo: GitRepo, tmp_path: Path
) -> None:
    ticks = tmp_path / "ticks.txt"
    commit = repo.commit(
        "node",
        {
            "Procfile": "web: node web.js\nworker: node worker.js\n",
            "web.js": MARKER_SERVER_JS,
            "worker.js": WORKER_JS,
        },
    )
    env = {"TICKS": str(ticks), "MARKER": str(tmp_path / "none")}
    first = outcome(deploys.apply(entry("shop", repo.url, commit, "r1", env=env)), "live")
    # package.json says `node server.js`; the Procfile's web: line wins, and says so.
    assert get(first["port"])[1].startswith("web from the Procfile"), get(first["port"])
    detect = deploys.stages("shop", "detect")
    assert (
        "start: the Procfile's web: line (overrides package.json's start script "
        "`node server.js`)" in detect
    ), detect
    assert "processes: worker (node worker.js)" in detect
    procs = processes(deploys.pm2_home)
    assert set(procs) == {"shop--r1", "shop--r1--worker-1"}, procs
    # The worker runs: its file keeps growing.
    size = wait_for(lambda: ticks.exists() and ticks.stat().st_size, 15, "the worker's ticks")
    wait_for(lambda: ticks.stat().st_size > size, 15, "more ticks")
    assert set(ticks.read_text().split()) == {"worker.1"}

    # Scaled to two: a new release with two workers; the old release's worker stops.
    ticks.unlink()
    second = deploys.apply(entry("shop", repo.url, commit, "r2", env=env, formation={"worker": 2}))
    outcome(second, "live")
    assert set(processes(deploys.pm2_home)) == {
        "shop--r2",
        "shop--r2--worker-1",
        "shop--r2--worker-2",
    }
    wait_for(
        lambda: ticks.exists() and set(ticks.read_text().split()) == {"worker.1", "worker.2"},
        15,
        "ticks from both workers",
    )
    # Scaled to zero: only the web process is left.
    outcome(
        deploys.apply(entry("shop", repo.url, commit, "r3", env=env, formation={"worker": 0})),
        "live",
    )
    assert set(processes(deploys.pm2_home)) == {"shop--r3"}
    assert "worker: scaled to 0, not started" in deploys.stages("shop", "start")


def test_a_crashing_worker_fails_the_deploy(deploys: LocalDeploys, repo: GitRepo) -> None:
    good = repo.commit("node")
    port = outcome(deploys.apply(entry("shop", repo.url, good, "r1")), "live")["port"]
    crash = repo.commit(
        files={
            "Procfile": "worker: node crash.js\n",
            "crash.js": "console.error('no queue configured'); process.exit(1);\n",
        }
    )
    failed = outcome(deploys.apply(entry("shop", repo.url, crash, "r2")), "failed")
    assert "process shop--r2--worker-1" in failed["reason"], failed
    assert "crashed on start" in failed["reason"], failed
    # PM2 restarted it before the deploy gave up: its output is shown once, not per start.
    tail = failed["log_tail"]
    assert [line for line in tail if "no queue" in line] == ["no queue configured"], tail
    assert tail[-1].startswith("(the line above came ") and tail[-1].endswith(" times in a row)")
    assert set(processes(deploys.pm2_home)) == {"shop--r1"}
    assert get(port)[0] == 200


def test_release_command_runs_before_the_switch_and_a_failing_one_stops_the_deploy(
    deploys: LocalDeploys, repo: GitRepo, tmp_path: Path
) -> None:
    marker = tmp_path / "migrated.txt"
    env = {"MARKER": str(marker)}
    files = {
        "Procfile": "web: node web.js\nrelease: node migrate.js\n",
        "web.js": MARKER_SERVER_JS,
        "migrate.js": MIGRATE_JS,
    }
    commit = repo.commit("node", files)
    live = outcome(deploys.apply(entry("shop", repo.url, commit, "r1", env=env)), "live")
    # The web process read the marker when it started: the release command ran before.
    assert get(live["port"])[1] == "web from the Procfile; marker: migrated by r1\n"
    release = deploys.stages("shop", "release")
    assert any(line.startswith("$ ") and line.endswith("/node migrate.js") for line in release)
    assert "migrations applied" in release, release

    broken = repo.commit(files={"Procfile": "web: node web.js\nrelease: node -e process.exit(4)\n"})
    failed = outcome(deploys.apply(entry("shop", repo.url, broken, "r2", env=env)), "failed")
    assert failed["reason"] == (
        "the release command `node -e process.exit(4)` failed (exit status 4)"
    ), failed
    assert failed["serving"]["release"] == "r1"
    assert set(processes(deploys.pm2_home)) == {"shop--r1"}  # nothing of r2 was started
    assert get(live["port"])[0] == 200


def test_shell_syntax_in_the_procfile_is_refused_clearly(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    commit = repo.commit("node", {"Procfile": "web: npm run build && npm start\n"})
    failed = outcome(deploys.apply(entry("shop", repo.url, commit, "r1")), "failed")
    assert "uses shell syntax ('&&')" in failed["reason"]
    assert "put the commands in a script" in failed["reason"]


BUILD_JS = """
const fs = require("fs");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/greeting.txt", require("sf-greeting")("built"));
"""

BUILT_SERVER_JS = """
const fs = require("fs");
let dev = "absent";
try { require.resolve("sf-greeting"); dev = "present"; } catch (e) {}
require("http").createServer((req, res) =>
  res.end(`${fs.readFileSync("dist/greeting.txt", "utf8")}; dev dependency ${dev}; ` +
          `NODE_ENV=${process.env.NODE_ENV}`)
).listen(Number(process.env.PORT));
"""


def test_a_build_step_gets_dev_dependencies_and_the_release_keeps_only_production_ones(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    package = {
        "name": "buildy",
        "private": True,
        "scripts": {"build": "node build.js", "start": "node server.js"},
        "devDependencies": {"sf-greeting": "file:vendor/sf-greeting-1.0.0.tgz"},
    }
    commit = repo.commit(
        "node",
        {
            "package.json": json.dumps(package),
            "package-lock.json": None,
            "build.js": BUILD_JS,
            "server.js": BUILT_SERVER_JS,
        },
    )
    live = outcome(deploys.apply(entry("shop", repo.url, commit, "r1", env={})), "live")
    build = deploys.stages("shop", "build")
    steps = [line for line in build if line.startswith("$ ")]
    assert steps == [
        "$ npm install --include=dev",
        "$ npm run build",
        "$ npm install --omit=dev",
    ], build
    body = get(live["port"])[1]
    assert body.startswith("hello from built"), body
    assert body.endswith("; dev dependency absent; NODE_ENV=production"), body


# -- interpreter versions --------------------------------------------------------------


def test_pinned_python_the_server_has_is_used(deploys: LocalDeploys, repo: GitRepo) -> None:
    commit = repo.commit("python", {".python-version": f"{PYTHON}\n"})
    live = outcome(deploys.apply(entry("shop", repo.url, commit, "r1")), "live")
    detect = deploys.stages("shop", "detect")
    assert any(
        line.startswith(f"Python {PYTHON}.") and f"(from .python-version: {PYTHON})" in line
        for line in detect
    ), detect
    assert get(live["port"])[0] == 200


def test_pinned_versions_the_server_lacks_fail_before_any_build(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    commit = repo.commit("python", {"runtime.txt": "python-3.4.10\n"})
    failed = outcome(deploys.apply(entry("shop", repo.url, commit, "r1")), "failed")
    reason = failed["reason"]
    assert reason.startswith("runtime.txt asks for Python 3.4.10; the server has "), reason
    assert f"{PYTHON}." in reason
    assert not [line for line in deploys.stages("shop", "build") if line.startswith("$ ")]

    package = json.loads((APPS / "node" / "package.json").read_text())
    package["engines"] = {"node": ">=99"}
    commit = repo.commit("node", {"package.json": json.dumps(package)})
    failed = outcome(deploys.apply(entry("shop", repo.url, commit, "r2")), "failed")
    assert failed["reason"].startswith(
        "package.json engines.node asks for Node.js >=99; the server has Node.js "
    ), failed
    assert not [line for line in deploys.stages("shop", "build") if line.startswith("$ ")]


def test_a_requirement_needing_a_newer_python_is_explained_in_one_sentence(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    if sys.version_info >= (3, 12):
        pytest.fail("this test needs a Python older than 3.12 (Django 6.0 requires 3.12)")
    commit = repo.commit("python", {"requirements.txt": "Django==6.0\n"})
    failed = outcome(deploys.apply(entry("shop", repo.url, commit, "r1")), "failed")
    assert failed["reason"].startswith(
        "`pip install -r requirements.txt` failed (exit status 1): requirements.txt needs "
        "Django==6.0, which needs Python >=3.12"
    ), failed
    assert f"the server's Python is {PYTHON}." in failed["reason"]


# -- Django and the Host header -------------------------------------------------------

DJANGO_SETTINGS = """
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "not-secret-in-tests"
DEBUG = False
ALLOWED_HOSTS = os.environ["ALLOWED_HOSTS"].split(",")
INSTALLED_APPS = ["django.contrib.staticfiles"]
MIDDLEWARE = []
ROOT_URLCONF = "site_conf.urls"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DB_PATH"]}
}
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "assets"]
"""

DJANGO_URLS = """
from django.http import HttpResponse
from django.urls import path

urlpatterns = [
    path("", lambda request: HttpResponse("hello from django")),
    path("healthz", lambda request: HttpResponse("ok")),
]
"""

DJANGO_MANAGE = """#!/usr/bin/env python
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_conf.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""


def django_files() -> dict[str, str | bytes | None]:
    return {
        "requirements.txt": "Django>=4.2,<6\ngunicorn>=21\n",
        "Procfile": (
            "web: gunicorn site_conf.wsgi --bind 127.0.0.1:$PORT\n"
            "release: python manage.py migrate --no-input\n"
        ),
        "manage.py": DJANGO_MANAGE,
        "site_conf/__init__.py": "",
        "site_conf/settings.py": DJANGO_SETTINGS,
        "site_conf/urls.py": DJANGO_URLS,
        "site_conf/wsgi.py": (
            "import os\nfrom django.core.wsgi import get_wsgi_application\n"
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'site_conf.settings')\n"
            "application = get_wsgi_application()\n"
        ),
        "assets/app.css": "body { color: rebeccapurple; }\n",
    }


def test_django_with_debug_off_serves_its_static_files_through_nginx(
    deploys: LocalDeploys, repo: GitRepo, nginx: NginxServer, tmp_path: Path
) -> None:
    commit = repo.commit(files=django_files())
    domain = "django.conv.test"
    env = {"ALLOWED_HOSTS": domain, "DB_PATH": str(tmp_path / "db.sqlite3")}
    result = deploys.apply(
        entry(
            "shop",
            repo.url,
            commit,
            "r1",
            env=env,
            domains=[domain],
            health={"path": "/healthz", "timeout_s": 60},
        )
    )
    outcome(result, "live")
    build = deploys.stages("shop", "build")
    assert any("manage.py collectstatic --noinput" in line for line in build), build
    assert "Django: nginx serves /static/ from" in "\n".join(build)
    assert any("No migrations to apply" in line for line in deploys.stages("shop", "release"))
    assert through_nginx(nginx, domain) == (200, "hello from django")
    status, body = through_nginx(nginx, domain, "/static/app.css")
    assert (status, body) == (200, "body { color: rebeccapurple; }\n")
    conf = (nginx.conf_dir / "shop.conf").read_text()
    assert "location ^~ /static/ {" in conf  # nginx, not the app, answers /static/
    # The health check asked with the domain's Host: Django refuses any other (400).
    assert "health check: waiting for GET /healthz (Host: django.conv.test)" in "\n".join(
        deploys.stages("shop", "health")
    )


HOST_CHECKING_JS = """
const http = require("http");
http.createServer((req, res) => {
  if (req.headers.host !== process.env.ALLOWED_HOST) {
    res.writeHead(400, {"content-type": "text/html"});
    res.end("<h1>Invalid Host header</h1>");
    return;
  }
  res.end("hello " + req.headers.host);
}).listen(Number(process.env.PORT));
"""


def test_the_health_check_uses_the_apps_host_and_fails_fast_on_errors(
    deploys: LocalDeploys, repo: GitRepo, nginx: NginxServer
) -> None:
    commit = repo.commit("node", {"Procfile": "web: node host.js\n", "host.js": HOST_CHECKING_JS})
    health = {"path": "/", "timeout_s": 120}
    env = {"ALLOWED_HOST": "right.conv.test"}
    right = entry("shop", repo.url, commit, "r1", env=env, domains=["right.conv.test"])
    outcome(deploys.apply({**right, "health": health}), "live")
    assert through_nginx(nginx, "right.conv.test") == (200, "hello right.conv.test")

    wrong = entry("shop", repo.url, commit, "r2", env=env, domains=["wrong.conv.test"])
    started = time.monotonic()
    failed = outcome(deploys.apply({**wrong, "health": health}), "failed")
    took = time.monotonic() - started
    assert failed["reason"] == (
        "health check failed: GET / (Host: wrong.conv.test) answered 400: Invalid Host header "
        "(every answer for 5 s)"
    ), failed
    assert took < 60, f"a steady 400 waited {took:.0f} s (the timeout is 120 s)"
    assert through_nginx(nginx, "right.conv.test")[0] == 200  # r1 still serves


# -- config releases -------------------------------------------------------------------

ENV_SERVER_JS = """
require("http").createServer((req, res) => res.end(`greeting=${process.env.GREETING}`))
  .listen(Number(process.env.PORT));
"""


def test_a_new_release_of_a_built_commit_reuses_its_build(
    deploys: LocalDeploys, repo: GitRepo
) -> None:
    files = {"Procfile": "web: node env.js\n", "env.js": ENV_SERVER_JS}
    c1 = repo.commit("node", files)

    def deploy(release: str, commit: str, greeting: str) -> dict:
        app = entry("shop", repo.url, commit, release, env={"GREETING": greeting})
        return outcome(deploys.apply({**app, "keep_releases": 2}), "live")

    deploy("r1", c1, "hello")
    r2 = deploy("r2", c1, "bonjour")  # a config change: same commit, new env
    checkout = deploys.stages("shop", "checkout")
    assert checkout == [
        f"commit {c1[:12]} is already built (release r1): reusing its build (no fetch, no build)"
    ], checkout
    assert not deploys.stages("shop", "build") and not deploys.stages("shop", "sync")
    assert get(r2["port"])[1] == "greeting=bonjour"
    assert set(processes(deploys.pm2_home)) == {"shop--r2"}
    app_dir = deploys.app_dir("shop")
    assert os.readlink(app_dir / "current") == "releases/r1"  # r2 runs from r1's files
    assert not (app_dir / "releases" / "r2").exists()

    c2 = repo.commit(files={"version.txt": "v2\n"})
    deploy("r3", c2, "bonjour")
    deploy("r4", c2, "hallo")
    # Two kept (r4, r3): r1's and r2's markers go, and r1's directory with them.
    assert sorted(p.stem for p in (app_dir / "meta").glob("*.json")) == ["r3", "r4"]
    assert sorted(p.name for p in (app_dir / "releases").iterdir()) == ["r3"]
    # Going back to c1 builds it again (its build is gone), under a new release.
    deploy("r5", c1, "hello")
    assert deploys.stages("shop", "sync"), deploys.log()
