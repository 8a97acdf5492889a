"""A dashboard open on instance B follows what happens on instance A's agent.

Two real instances (the machine's PostgreSQL, a private redis-server) behind nginx; a
real agent with the deploy engine (pm2, a git repository of the test's own) connects
through nginx and lands on A. A person signed in on B watches it come online, watches
the log of a deploy someone started through A's API, then deploys from B's page: that
deploy runs on B and its commands reach the agent through A.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverflow_testkit import free_port
from serverflow_testkit.browser import RealAgent, browser_page, chromium
from serverflow_testkit.cluster import (
    PASSWORD,
    owner_token,
    start_instances,
    start_load_balancer,
)
from serverflow_testkit.controlplane import run_cli
from serverflow_testkit.deploy import deploy_settings
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.nginx import world_readable_dir
from serverflow_testkit.pm2 import pm2_home, require_node_and_pm2
from serverflow_testkit.redis import RedisServer

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the browser fixture reports it (a skip, or a failure in CI)
    Page = Any  # type: ignore[misc,assignment]
    expect = None  # type: ignore[assignment]

pytestmark = pytest.mark.postgres
TIMEOUT = 60_000


@pytest.fixture
def page(pg_url: str, tmp_path: Path) -> Iterator[Page]:
    # A browser of this test's own, started after the database and closed before it is
    # dropped: Playwright's sync API keeps an event loop running in this thread, and the
    # database fixture runs its own with asyncio.run.
    with chromium(tmp_path / "chromium-home") as browser, browser_page(browser, 15_000) as page:
        yield page


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(base) + r"/(\?.*)?$"))


def test_a_page_on_b_follows_an_agent_and_deploys_held_by_a(
    tmp_path: Path, pg_url: str, redis_server: RedisServer, page: Page
) -> None:
    require_node_and_pm2()
    lb_port = free_port()
    env = {
        "SERVERFLOW_HEARTBEAT_INTERVAL_MS": "500",
        "SERVERFLOW_PUBLIC_URL": f"http://127.0.0.1:{lb_port}",
    }
    shared = {"SERVERFLOW_DATABASE_URL": pg_url, "SERVERFLOW_REDIS_URL": redis_server.url()}
    token = owner_token(tmp_path / "instance-0" / "data", {**shared, **env})
    cp_a, cp_b = start_instances(tmp_path, pg_url, redis_server.url(), **env)
    lb = start_load_balancer(world_readable_dir("sf-lb-"), [cp_a], backup=[cp_b], port=lb_port)
    repo = GitRepo(tmp_path / "repo")
    repo.commit("node", files={"version.txt": "v1\n"}, message="v1")
    headers = {"Authorization": f"Bearer {token}"}
    agent: RealAgent | None = None
    try:
        with (
            pm2_home(tmp_path) as home,
            httpx.Client(base_url=cp_a.url + "/api/v1", headers=headers, timeout=60) as on_a,
        ):
            email = "deployer@acme.test"
            run_cli(
                "users", "create", email, "--org", "acme", "--role", "member",
                "--password-stdin", env=cp_a.env, input=PASSWORD + "\n",
            )  # fmt: skip
            sign_in(page, cp_b.url, email)

            # A server added on A; its agent connects (through nginx) to A.
            server = on_a.post("/servers", json={"name": "deploy-1"}).json()
            agent = RealAgent(lb.url, server["install"]["token"], tmp_path / "agent")
            agent.register()
            config = json.loads((agent.state / "agent.json").read_text())
            config["deploy"] = deploy_settings(agent.state, home)
            (agent.state / "agent.json").write_text(json.dumps(config))
            page.goto(cp_b.url + "/")
            row = page.locator(f'tr[data-server-id="{server["id"]}"]')
            expect(row.locator("[data-field=status]")).not_to_have_text("Online")
            agent.run()
            expect(row.locator("[data-field=status]")).to_have_text("Online", timeout=TIMEOUT)
            assert "authorized" in cp_a.log() and "deploy-1" not in cp_b.log()

            made = on_a.post(
                "/apps",
                json={
                    "name": "hello",
                    "repo": repo.url,
                    "servers": ["deploy-1"],
                    "tls": False,
                    "health_path": "/healthz",
                },
            )
            assert made.status_code == 201, made.text
            app_id = made.json()["id"]

            # Someone deploys through A's API; B's page shows that deploy's log, live.
            page.goto(f"{cp_b.url}/apps/{app_id}")
            expect(page.locator("#deployments")).to_contain_text("Not deployed yet")
            expect(page.locator("#live-state")).to_have_attribute("data-state", "on")
            started = on_a.post(f"/apps/{app_id}/deploy", json={})
            assert started.status_code in (200, 202), started.text
            first = page.locator("#deployments tbody tr").first
            expect(page.locator("#log")).to_contain_text("deployment live", timeout=180_000)
            expect(first.locator("[data-field=status]")).to_have_text("Live", timeout=TIMEOUT)

            # A deploy from B's page: run by B, through A's socket to the agent.
            repo.commit("node", files={"version.txt": "v2\n"}, message="v2")
            page.get_by_role("button", name="Deploy", exact=True).click()
            page.locator("#confirm-ok").click()
            expect(page.locator("#deployments tbody tr")).to_have_count(2, timeout=TIMEOUT)
            expect(first.locator("[data-field=status]")).to_have_text("Live", timeout=180_000)
            expect(page.locator("#log")).to_contain_text("deployment live")
            deployments = on_a.get(f"/apps/{app_id}/deployments").json()["deployments"]
            assert [d["status"] for d in deployments] == ["live", "superseded"], deployments
            relayed = httpx.get(cp_a.url + "/metrics").text
            assert re.search(r"^serverflow_commands_relayed_total [1-9]", relayed, re.M), relayed
    finally:
        page.goto("about:blank")  # its live socket closes before the instances stop
        if agent is not None:
            agent.stop()
        cp_a.stop()
        cp_b.stop()
        lb.stop()
    for cp in (cp_a, cp_b):
        assert "Traceback" not in cp.log(), cp.log()
