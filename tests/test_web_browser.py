# ruff: noqa: RUF001 (French typography: the apostrophe is U+2019)
"""The dashboard in the real Chromium, against a real `serverflow up` and real agents.

Plain `def` tests: Playwright's sync API cannot run inside pytest-asyncio's loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverflow_testkit import REQUIRE_REAL, wait_for
from serverflow_testkit.browser import INSTALL_TOKEN, Dashboard, browser_page, start_dashboard
from serverflow_testkit.screenshot import take_overview

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # the browser fixture reports it (a skip, or a failure in CI)
    Browser = Page = Any  # type: ignore[misc,assignment]
    expect = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "images" / "overview.png"
TIMEOUT = 30_000  # ms, for things that wait on an agent


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    dashboard = start_dashboard(tmp_path_factory.mktemp("dashboard"))
    try:
        yield dashboard
    finally:
        dashboard.stop()


@pytest.fixture(scope="module")
def fleet(dash: Dashboard) -> dict[str, Any]:
    """A server with a real agent online, and an app placed on it (never deployed)."""
    with dash.http() as http:
        server = http.post("/servers", json={"name": "db-1"}).json()
        dash.agent(server["install"]["token"], "db-1")
        wait_for(
            lambda: http.get(f"/servers/{server['id']}").json()["status"] == "online",
            what="db-1 online",
        )
        app = http.post(
            "/apps",
            json={
                "name": "shop",
                "repo": "https://git.example.test/shop.git",
                "servers": ["db-1"],
                "domains": ["shop.example.test"],
                "env": {"SECRET_KEY": "do-not-show"},
            },
        )
        assert app.status_code == 201, app.text
    return {"server": server, "app": app.json()}


@pytest.fixture
def page(chromium_browser: Browser) -> Iterator[Page]:
    with browser_page(chromium_browser, 10_000) as page:
        yield page


def metric_text(page: Page, server_id: str, metric: str = "cpu") -> str:
    cell = page.locator(f'tr[data-server-id="{server_id}"] [data-metric="{metric}"] [data-value]')
    return str(cell.text_content() or "")


def test_sign_in_and_out(dash: Dashboard, page: Page) -> None:
    email = dash.user("signin@acme.test", "member")
    page.goto(dash.url + "/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("wrong password here")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    dash.sign_in(page, email)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("#live-state")).to_have_text("Live updates on")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))


def test_add_a_server_and_watch_it_come_online(dash: Dashboard, page: Page) -> None:
    email = dash.user("adder@acme.test", "admin")
    dash.sign_in(page, email)
    page.get_by_role("link", name="Add a server").click()
    page.get_by_label("Name").fill("web-1")
    page.get_by_role("button", name="Add server").click()
    command = page.locator("#install-command")
    expect(command).to_contain_text("install.sh")
    token = INSTALL_TOKEN.search(command.text_content() or "")
    assert token, command.text_content()
    status = page.locator("#install-status")
    expect(status).to_have_text("Waiting for the agent")
    page.evaluate("window.__sameDocument = true")

    dash.agent(token.group(0), "web-1")
    expect(status).to_have_text("Online", timeout=TIMEOUT)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    expect(page.get_by_role("link", name="Open the server's page")).to_be_visible()

    # Live metrics on the overview: the figures change without a reload.
    page.goto(dash.url + "/")
    with dash.http() as http:
        server = next(s for s in http.get("/servers").json()["servers"] if s["name"] == "web-1")
    row = page.locator(f'tr[data-server-id="{server["id"]}"]')
    expect(row.locator("[data-field=status]")).to_have_text("Online")
    page.evaluate(
        """(id) => {
            window.__changes = 0;
            const row = document.querySelector(`tr[data-server-id="${id}"]`);
            new MutationObserver(() => window.__changes++).observe(
                row, {subtree: true, childList: true, characterData: true});
        }""",
        server["id"],
    )
    page.wait_for_function("() => window.__changes >= 3", timeout=TIMEOUT)
    assert re.fullmatch(r"\d+(\.\d)?%", metric_text(page, server["id"], "memory"))
    assert re.fullmatch(r"\d+(\.\d)?%", metric_text(page, server["id"], "disk"))

    # The server's page draws its metrics history.
    row.get_by_role("link", name="web-1").click()
    expect(page.locator("#metrics-chart polyline.cpu")).to_have_count(1, timeout=TIMEOUT)
    expect(page.locator("#timeline")).to_contain_text("web-1 came online")


def test_switch_to_french(dash: Dashboard, fleet: dict[str, Any], page: Page) -> None:
    email = dash.user("francais@acme.test", "admin")
    dash.sign_in(page, email)
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Language of the dashboard").select_option("fr")
    page.get_by_role("button", name="Save").first.click()
    expect(page.get_by_text("Votre langue est enregistrée.")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "fr")

    page.get_by_role("link", name="Vue d’ensemble").click()
    expect(page.get_by_role("heading", name="Serveurs")).to_be_visible()
    expect(page.get_by_role("heading", name="Applications")).to_be_visible()
    server_id = fleet["server"]["id"]
    row = page.locator(f'tr[data-server-id="{server_id}"]')
    expect(row.locator("[data-field=status]")).to_have_text("En ligne")
    # Texts written by the script are French too, and numbers use French formatting.
    expect(page.locator("#live-state")).to_have_text("Mises à jour en direct")
    expect(row.locator('[data-metric="memory"] [data-value]')).to_have_text(
        re.compile(r"^\d+,\d\s%$")
    )
    page.get_by_role("link", name="shop").click()
    expect(page.get_by_role("button", name="Déployer")).to_be_visible()
    expect(page.get_by_role("heading", name="Variables d’environnement")).to_be_visible()
    page.get_by_role("button", name="Déployer").click()
    expect(page.locator("#confirm")).to_contain_text("Déployer shop maintenant ?")
    page.get_by_role("button", name="Annuler").click()
    page.get_by_role("link", name="Événements").click()
    expect(page.locator("#timeline")).to_contain_text("db-1 est en ligne")


def test_a_viewer_cannot_deploy(dash: Dashboard, fleet: dict[str, Any], page: Page) -> None:
    email = dash.user("viewer@acme.test", "viewer")
    dash.sign_in(page, email)
    expect(page.get_by_role("link", name="shop")).to_be_visible()
    expect(page.get_by_role("link", name="Add a server")).to_have_count(0)
    page.get_by_role("link", name="shop").click()
    expect(page.get_by_role("heading", name="shop")).to_be_visible()
    expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
    expect(page.get_by_role("button", name="Roll back")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete app")).to_have_count(0)
    expect(page.get_by_text("SECRET_KEY")).to_be_visible()
    assert "do-not-show" not in page.content()

    # The API refuses too: from this browser session (with its CSRF token)...
    refused = page.evaluate(
        """async (id) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(`/api/v1/apps/${id}/deploy`, {method: "POST",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                body: "{}"});
            return [r.status, (await r.json()).error.code];
        }""",
        fleet["app"]["id"],
    )
    assert refused == [403, "AUTH004"]
    # ... and with a viewer token.
    with dash.http("viewer") as http:
        answer = http.post(f"/apps/{fleet['app']['id']}/deploy", json={})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "AUTH004"
    page.get_by_role("link", name="Plugins").click()
    expect(page.get_by_role("button", name="Disable")).to_have_count(0)


def test_tokens_are_created_shown_once_and_revoked(dash: Dashboard, page: Page) -> None:
    email = dash.user("tokens@acme.test", "admin")
    dash.sign_in(page, email)
    page.goto(dash.url + "/settings")
    page.get_by_label("Name").fill("ci-deploys")
    page.get_by_label("Role").select_option("member")
    page.get_by_role("button", name="Create token").click()
    value = page.locator("#token-value")
    expect(value).to_have_text(re.compile(r"^sf_[0-9a-f]{32}_"))
    token = value.text_content() or ""
    answer = httpx.get(
        dash.url + "/api/v1/servers", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200
    row = page.locator('tr[data-token-name="ci-deploys"]')
    expect(row.locator("[data-field=state]")).to_have_text("Active")
    assert token not in (row.text_content() or "")  # listed by prefix only

    row.get_by_role("button", name="Revoke").click()
    expect(page.locator("#confirm-text")).to_contain_text("ci-deploys")
    page.locator("#confirm-ok").click()
    expect(row.locator("[data-field=state]")).to_have_text("Revoked")
    answer = httpx.get(
        dash.url + "/api/v1/servers", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 401
    page.reload()
    expect(page.locator("#token-value")).to_be_hidden()


def test_overview_screenshot(
    dash: Dashboard, fleet: dict[str, Any], page: Page, tmp_path: Path
) -> None:
    """The picture at the top of the README (servers online with live figures), taken as
    `python -m serverflow_testkit.screenshot` takes it, into the temp dir: the tracked
    docs/images/overview.png changes only when someone runs that command."""
    shot = take_overview(dash, page, [fleet["server"]["id"]], tmp_path / "overview.png")
    assert shot.stat().st_size > 10_000
    readme = (ROOT / "README.md").read_text()
    assert f"![ServerFlow overview]({SCREENSHOT.relative_to(ROOT)})" in readme
    assert SCREENSHOT.stat().st_size > 10_000


# -- deploy and rollback through the browser (needs the agent's deploy engine) ---------


def deploy_engine_or_skip(dash: Dashboard, server_id: str) -> None:
    with dash.http() as http:
        actions = {a["name"] for a in http.get(f"/servers/{server_id}/actions").json()["actions"]}
    if "state.apply" not in actions:
        message = "the agent does not offer state.apply yet (deploy engine not registered)"
        if REQUIRE_REAL:
            pytest.fail(message + " (SERVERFLOW_REQUIRE_REAL=1)", pytrace=False)
        pytest.skip(message)


def test_deploy_watch_logs_and_roll_back(dash: Dashboard, page: Page, tmp_path: Path) -> None:
    from serverflow_testkit.deploy import deploy_settings
    from serverflow_testkit.gitrepo import GitRepo
    from serverflow_testkit.pm2 import pm2_home, require_node_and_pm2

    require_node_and_pm2()
    repo = GitRepo(tmp_path / "repo")
    repo.commit("node", files={"version.txt": "v1\n"}, message="v1")
    with pm2_home(tmp_path) as home, dash.http() as http:
        server = http.post("/servers", json={"name": "deploy-1"}).json()
        agent = dash.agent(server["install"]["token"], "deploy-1", start=False).register()
        config = json.loads((agent.state / "agent.json").read_text())
        config["deploy"] = deploy_settings(agent.state, home)
        (agent.state / "agent.json").write_text(json.dumps(config))
        agent.run()
        try:
            _deploy_and_roll_back(dash, page, repo, http, server)
        finally:
            agent.stop()  # before pm2_home kills the daemon it used


def _deploy_and_roll_back(
    dash: Dashboard, page: Page, repo: Any, http: httpx.Client, server: dict[str, Any]
) -> None:
    wait_for(
        lambda: http.get(f"/servers/{server['id']}").json()["status"] == "online",
        what="deploy-1 online",
    )
    deploy_engine_or_skip(dash, server["id"])
    made = http.post(
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

    dash.sign_in(page, dash.user("deployer@acme.test", "member"))
    page.goto(f"{dash.url}/apps/{app_id}")
    _deploy(page, "Deploy")
    first = page.locator("#deployments tbody tr").first
    expect(first.locator("[data-field=status]")).to_have_text("Live", timeout=180_000)
    expect(page.locator("#log")).to_contain_text("deployment live")

    repo.commit("node", files={"version.txt": "v2\n"}, message="v2")
    _deploy(page, "Deploy")
    expect(page.locator("#deployments tbody tr")).to_have_count(2)
    expect(first.locator("[data-field=status]")).to_have_text("Live", timeout=180_000)

    _deploy(page, "Roll back")
    expect(page.locator("#deployments tbody tr")).to_have_count(3)
    expect(first).to_contain_text("Rollback")
    expect(first.locator("[data-field=status]")).to_have_text("Live", timeout=180_000)
    deployments = http.get(f"/apps/{app_id}/deployments").json()["deployments"]
    assert [d["status"] for d in deployments] == ["live", "superseded", "superseded"]
    assert deployments[0]["release"] == deployments[2]["release"]  # v1 is back


def _deploy(page: Page, button: str) -> None:
    page.get_by_role("button", name=button, exact=True).click()
    expect(page.locator("#confirm")).to_be_visible()
    page.locator("#confirm-ok").click()
    expect(page.locator("#log")).not_to_be_empty(timeout=TIMEOUT)


def test_edit_an_apps_settings(dash: Dashboard, fleet: dict[str, Any], page: Page) -> None:
    email = dash.user("editor@acme.test", "member")
    dash.sign_in(page, email)
    page.goto(f"{dash.url}/apps/{fleet['app']['id']}")
    page.get_by_text("Edit settings").click()
    page.get_by_label("Branch", exact=True).fill("stable")
    page.get_by_label("Start command").fill("node server.js --port 3000")
    page.get_by_label("Health check timeout (seconds)").fill("0")  # refused by the API
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#app-edit-error")).to_contain_text("health_timeout_s")
    page.get_by_label("Health check timeout (seconds)").fill("20")
    with page.expect_navigation(url=re.compile(r"\?saved=1$")):  # the page reloads
        page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    settings = page.locator("#settings-title").locator("..")
    expect(settings).to_contain_text("stable")
    expect(settings).to_contain_text("node server.js --port 3000")
    with dash.http() as http:
        app = http.get(f"/apps/{fleet['app']['id']}").json()
    assert app["branch"] == "stable" and app["health_timeout_s"] == 20
    assert app["start"] == ["node", "server.js", "--port", "3000"]
    assert app["domains"] == ["shop.example.test"] and app["build"] is None  # kept

    # Emptied fields go back to their default: the default branch, detection.
    page.get_by_text("Edit settings").click()
    page.get_by_label("Branch", exact=True).fill("")
    page.get_by_label("Start command").fill("")
    # Wait for this save's reload: the toast of the previous one may still be showing.
    with page.expect_navigation(url=re.compile(r"\?saved=1$")):
        page.get_by_role("button", name="Save settings").click()
    page.wait_for_load_state()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    with dash.http() as http:
        app = http.get(f"/apps/{fleet['app']['id']}").json()
    assert app["branch"] is None and app["start"] is None
