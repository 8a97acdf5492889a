"""The app page's Logs section in the real Chromium: the app's last lines, refreshed, and
followed live, from a real agent and real PM2 behind a real `serverflow up`.

Plain `def` tests: Playwright's sync API cannot run inside pytest-asyncio's loop.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from serverflow_testkit import wait_for
from serverflow_testkit.browser import Dashboard, browser_page, start_dashboard
from serverflow_testkit.deploy import deploy_settings, get
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.pm2 import pm2_home, require_node_and_pm2

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # the browser fixture reports it (a skip, or a failure in CI)
    Browser = Page = Any  # type: ignore[misc,assignment]
    expect = None  # type: ignore[assignment]

SERVER_JS = """
const http = require("http");
http
  .createServer((req, res) => {
    if (req.url.startsWith("/err")) console.error("oops " + req.url);
    else if (req.url !== "/healthz") console.log("GET " + req.url);
    res.end("ok\\n");
  })
  .listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
"""


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, dict]]:
    """A control plane, a real agent, and an app deployed on it: (dashboard, app)."""
    require_node_and_pm2()
    work = tmp_path_factory.mktemp("logs-browser")
    repo = GitRepo(work / "repo")
    repo.commit("node", {"server.js": SERVER_JS})
    dash = start_dashboard(work)
    try:
        with pm2_home(work) as home, dash.http() as http:
            server = http.post("/servers", json={"name": "web-1"}).json()
            agent = dash.agent(server["install"]["token"], "web-1", start=False).register()
            config = json.loads((agent.state / "agent.json").read_text())
            config["deploy"] = deploy_settings(agent.state, home)
            (agent.state / "agent.json").write_text(json.dumps(config))
            agent.run()
            try:
                wait_for(
                    lambda: http.get(f"/servers/{server['id']}").json()["status"] == "online",
                    what="web-1 online",
                )
                app = http.post(
                    "/apps",
                    json={
                        "name": "shop",
                        "repo": repo.url,
                        "servers": ["web-1"],
                        "health_path": "/healthz",
                    },
                ).json()
                http.post(f"/apps/{app['id']}/deploy", json={})
                live = wait_for(
                    lambda: [
                        d
                        for d in http.get(f"/apps/{app['id']}/deployments").json()["deployments"]
                        if d["status"] in ("live", "failed")
                    ],
                    180,
                    "the deployment to end",
                )
                assert live[0]["status"] == "live", live
                yield dash, {**app, "release": live[0]["release"]}
            finally:
                agent.stop()  # before pm2_home kills the daemon it used
    finally:
        dash.stop()


@pytest.fixture
def page(chromium_browser: Browser) -> Iterator[Page]:
    with browser_page(chromium_browser, 30_000) as page:
        yield page


def test_the_logs_section_shows_refreshes_and_follows(
    live_app: tuple[Dashboard, dict[str, Any]], page: Page
) -> None:
    dash, app = live_app
    release = app["release"]
    with dash.http() as http:
        lines = http.get(f"/apps/{app['id']}/logs").json()["lines"]
    port = int(re.search(r"listening on (\d+)", lines[0]["line"])[1])  # type: ignore[index]

    dash.sign_in(page, dash.user("watcher@acme.test", "viewer"))
    page.goto(f"{dash.url}/apps/{app['id']}")
    output = page.locator("#runtime-log")
    expect(output).to_contain_text(f"web {release} | listening on {port}")

    follow = page.get_by_role("button", name="Follow live")
    follow.click()
    expect(page.locator("#runtime-log-follow")).to_have_attribute("aria-pressed", "true")
    marker = f"/seen-live-{uuid.uuid4().hex[:8]}"
    wait_for(lambda: get(port, marker)[0] == 200, 10, "the app to answer")
    expect(output).to_contain_text(f"web {release} | GET {marker}")
    page.get_by_role("button", name="Stop following").click()
    expect(page.locator("#runtime-log-follow")).to_have_text("Follow live")

    assert get(port, "/err-shown-in-red")[0] == 200
    with dash.http() as http:
        wait_for(
            lambda: "oops /err-shown-in-red" in http.get(f"/apps/{app['id']}/logs").text,
            30,
            "the line on the server",
        )
    page.get_by_role("button", name="Refresh").click()
    expect(output.locator(".err")).to_contain_text(f"web {release} | oops /err-shown-in-red")
