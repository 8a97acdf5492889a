"""The pytest plugin (entry point `pytest11`): fixtures that start the real components.

Each fixture starts the real thing on 127.0.0.1, in a temporary directory, and stops it by
its PID. When a component is missing it skips with the reason, or fails when
SERVERFLOW_REQUIRE_REAL=1 (see `serverflow_testkit.missing`). Component modules are
imported inside the fixtures, so loading this plugin costs nothing to a test run that
uses none of them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from serverflow_testkit import REQUIRE_REAL

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from serverflow_testkit.controlplane import Deployment
    from serverflow_testkit.gitrepo import GitRepo
    from serverflow_testkit.nginx import NginxServer
    from serverflow_testkit.pebble import PebbleServer
    from serverflow_testkit.postgres import PostgresServer
    from serverflow_testkit.redis import RedisServer
    from serverflow_testkit.tls import CertificateAuthority


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server")


def pytest_report_header(config: pytest.Config) -> str:
    mode = "fail (SERVERFLOW_REQUIRE_REAL=1)" if REQUIRE_REAL else "skip"
    return f"serverflow-testkit: missing real components {mode}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The machine's PostgreSQL at 127.0.0.1:5432 if it answers, else a throwaway cluster."""
    from serverflow_testkit.postgres import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database owned by a fresh NOSUPERUSER NOBYPASSRLS role, dropped afterwards."""
    from serverflow_testkit.postgres import app_database

    with app_database(postgres) as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port (the test may stop and start it again)."""
    from serverflow_testkit.redis import start_redis

    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def pm2_home_dir(tmp_path: Path) -> Iterator[Path]:
    """A private PM2_HOME (node, npm and pm2 required); `pm2 kill` at teardown."""
    from serverflow_testkit.pm2 import pm2_home, require_node_and_pm2

    require_node_and_pm2()
    with pm2_home(tmp_path) as home:
        yield home


@pytest.fixture(scope="session")
def nginx_server() -> Iterator[NginxServer]:
    """One nginx master on free ports for the session; call `reset()` to forget apps."""
    from serverflow_testkit.nginx import start_nginx, world_readable_dir

    base = world_readable_dir("sf-testkit-nginx-")
    try:
        server = start_nginx(base)
        yield server
        server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pebble_server() -> Iterator[PebbleServer]:
    """pebble (Let's Encrypt's test CA) for the session; every challenge is valid."""
    from serverflow_testkit.nginx import world_readable_dir
    from serverflow_testkit.pebble import start_pebble

    base = world_readable_dir("sf-testkit-pebble-")
    try:
        server = start_pebble(base)
        yield server
        server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def certificate_authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A throwaway openssl CA; `issue(name)` signs a certificate for 127.0.0.1."""
    from serverflow_testkit.tls import CertificateAuthority

    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    """An empty git repository (branch main); `commit("node")` fills it with a kit app."""
    from serverflow_testkit.gitrepo import GitRepo

    return GitRepo(tmp_path / "repo")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A real `serverflow up` with organisation Acme and an API token per role."""
    from serverflow_testkit.controlplane import bootstrap

    dep = bootstrap(tmp_path_factory.mktemp("serverflow") / "data")
    yield dep
    dep.cp.stop()


@pytest.fixture(scope="module")
def chromium_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Debian's headless Chromium through Playwright's sync API (plain `def` tests only)."""
    from serverflow_testkit.browser import chromium

    with chromium(tmp_path_factory.mktemp("chromium-home")) as browser:
        yield browser
