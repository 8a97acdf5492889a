"""The kit as an installed pytest plugin: its fixtures start the real components, and a
missing component skips, or fails when SERVERFLOW_REQUIRE_REAL=1."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from serverflow_testkit.controlplane import Deployment
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.nginx import NginxServer
from serverflow_testkit.pm2 import processes
from serverflow_testkit.postgres import fetch

pytest_plugins = ["pytester"]

FIXTURES = (
    "postgres",
    "pg_url",
    "pm2_home_dir",
    "nginx_server",
    "pebble_server",
    "certificate_authority",
    "git_repo",
    "deployment",
    "chromium_browser",
)
NEEDS_A_THING = """
from serverflow_testkit import missing

def test_needs_a_thing():
    missing("a-thing", "it is not installed here")
"""


def test_an_installed_kit_gives_its_fixtures_to_any_project(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    listed = set(
        re.findall(r"^(\w+)(?: \[\w+ scope\])? -- .*serverflow_testkit", result.stdout.str(), re.M)
    )
    assert set(FIXTURES) <= listed
    result.stdout.fnmatch_lines(["serverflow-testkit: missing real components *"])


@pytest.mark.parametrize(("require_real", "outcome"), [("", "skipped"), ("1", "failed")])
def test_a_missing_component_skips_unless_real_ones_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, require_real: str, outcome: str
) -> None:
    monkeypatch.setenv("SERVERFLOW_REQUIRE_REAL", require_real)
    pytester.makepyfile(NEEDS_A_THING)
    result = pytester.runpytest_subprocess("-rsf", "-p", "no:cacheprovider")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*a-thing is not available: it is not installed here*"])


def test_git_repo_commits_an_app_the_kit_ships(git_repo: GitRepo) -> None:
    commit = git_repo.commit("node", {"version.txt": "v9\n"})
    assert git_repo.head() == commit
    assert (git_repo.path / "server.js").is_file()
    assert (git_repo.path / "version.txt").read_text() == "v9\n"


def test_pm2_home_dir_is_private_and_empty(pm2_home_dir: Path) -> None:
    assert pm2_home_dir.is_dir()
    assert processes(pm2_home_dir) == {}


def test_pg_url_belongs_to_a_role_that_cannot_bypass_row_security(pg_url: str) -> None:
    (role,) = fetch(
        pg_url,
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    assert (role["rolsuper"], role["rolbypassrls"]) == (False, False)


def test_nginx_server_answers_for_unclaimed_names(nginx_server: NginxServer) -> None:
    answer = httpx.get(f"http://127.0.0.1:{nginx_server.http_port}/", timeout=10)
    assert answer.status_code == 404


def test_deployment_serves_the_api_to_its_tokens(deployment: Deployment) -> None:
    with deployment.http("viewer") as http:
        assert http.get("/servers").status_code == 200
