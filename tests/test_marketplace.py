"""The plugin marketplace: Install from a local wheelhouse through the dashboard, enable and
disable at run time and across restarts, who may do it, and what Install refuses.

The test plugins (tests/data/marketplace) are built into a temporary wheelhouse and
pip-installed into this virtualenv by the control plane itself; they are uninstalled at
teardown so other tests never see them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverflow.plugins import Plugins
from serverflow_testkit.browser import Dashboard, chromium, start_dashboard
from tests.conftest import (
    ControlPlaneUnderTest,
    Tenant,
    control_plane_with,
    make_settings,
    sign_in,
)

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # the browser fixture reports it (a skip, or a failure in CI)
    Browser = Page = Any  # type: ignore[misc,assignment]
    expect = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "tests" / "data" / "marketplace"
PACKAGES = ("serverflow-hello-runtime", "serverflow-hello-pages")
CATALOG = {
    "plugins": [
        {
            "name": "hello-runtime",
            "description": "A runtime that says hello.",
            "package": "serverflow-hello-runtime",
            "version": "1.0.0",
            "extension_points": ["runtimes"],
        },
        {
            "name": "hello-pages",
            "description": "An API route.",
            "package": "serverflow-hello-pages",
            "version": "2.0.0",
            "extension_points": ["blueprints"],
        },
        {
            "name": "ghost",
            "description": "Listed, but its wheel is nowhere.",
            "package": "serverflow-ghost",
            "version": "9.9.9",
            "extension_points": ["templates"],
        },
        {"name": "--index-url=http://evil.example", "package": "--pre", "version": "1"},
    ]
}


def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=check,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    work = tmp_path_factory.mktemp("market")
    wheelhouse = work / "wheelhouse"
    for source in ("hello_runtime", "hello_pages"):
        pip(
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheelhouse),
            str(SOURCES / source),
        )
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    pip("uninstall", "-y", *PACKAGES, check=False)  # leftovers of an interrupted run
    dash = start_dashboard(
        work,
        SERVERFLOW_PLUGIN_CATALOG=str(catalog),
        SERVERFLOW_PLUGIN_WHEELHOUSE=str(wheelhouse),
    )
    try:
        yield dash
    finally:
        dash.stop()
        pip("uninstall", "-y", *PACKAGES, check=False)


def restart(dash: Dashboard) -> None:
    dash.dep.cp.stop()
    dash.dep.cp.start()


def plugins_of(dash: Dashboard) -> dict[str, dict[str, Any]]:
    with dash.http("viewer") as http:
        return {p["name"]: p for p in http.get("/plugins").json()["plugins"]}


def create_app_with(dash: Dashboard, name: str, runtime: str) -> httpx.Response:
    with dash.http() as http:
        if not any(s["name"] == "rt-1" for s in http.get("/servers").json()["servers"]):
            http.post("/servers", json={"name": "rt-1"})
        return http.post(
            "/apps",
            json={
                "name": name,
                "repo": "https://git.example.test/x.git",
                "servers": ["rt-1"],
                "runtime": runtime,
            },
        )


def test_install_from_the_dashboard_then_disable_and_enable(
    market: Dashboard, tmp_path: Path
) -> None:
    # Its own browser: a module-long one would keep Playwright's loop running under the
    # async tests below.
    with chromium(tmp_path / "chromium-home") as browser:
        _install_disable(market, browser)
    _after_install(market)


def _install_disable(market: Dashboard, browser: Browser) -> None:
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    try:
        market.sign_in(page, market.user("plugins@acme.test", "admin", operator=True))
        page.get_by_role("link", name="Plugins").click()
        row = page.locator('tr[data-catalog="hello-runtime"]')
        expect(row.locator("[data-field=installed]")).to_have_text("Not installed")
        assert create_app_with(market, "before", "hello").json()["error"]["code"] == "APP002"

        row.get_by_role("button", name="Install").click()
        expect(page.locator("#confirm-text")).to_contain_text("hello-runtime")
        page.locator("#confirm-ok").click()
        expect(page.locator("#plugin-notice")).to_contain_text(
            "Plugin hello-runtime is installed.", timeout=120_000
        )
        expect(page.locator("#plugin-notice")).not_to_contain_text("Restart")
        installed = page.locator('tr[data-plugin="hello_runtime"]')
        expect(installed.locator("[data-field=status]")).to_have_text("Enabled")
        expect(installed).to_contain_text("Runtimes: hello")
        expect(row.locator("[data-field=installed]")).to_have_text("Installed (1.0.0)")

        # Usable at once, without a restart: the runtime is offered and accepted.
        page.goto(market.url + "/apps/new")
        expect(page.locator('#app-runtime option[value="hello"]')).to_have_count(1)
        assert create_app_with(market, "greeter", "hello").status_code == 201

        # Disabled: gone from use at once.
        page.goto(market.url + "/plugins")
        installed.get_by_role("button", name="Disable").click()
        expect(page.locator("#plugin-notice")).to_contain_text("hello_runtime is disabled")
        expect(installed.locator("[data-field=status]")).to_have_text("Disabled")
        page.goto(market.url + "/apps/new")
        expect(page.locator('#app-runtime option[value="hello"]')).to_have_count(0)
        refused = create_app_with(market, "greeter-2", "hello")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "APP002"
    finally:
        context.close()


def _after_install(market: Dashboard) -> None:
    state = json.loads((market.dep.cp.data_dir / "plugins.json").read_text())
    assert state == {"disabled": ["hello_runtime"]}
    with market.http() as http:
        kinds = [e["kind"] for e in http.get("/events").json()["events"]]
    assert "plugin.installed" in kinds and "plugin.disabled" in kinds

    # The choice survives a restart; enabling brings the runtime back.
    restart(market)
    assert plugins_of(market)["hello_runtime"]["status"] == "disabled"
    with market.http("operator") as http:
        enabled = http.post("/plugins/hello_runtime/enable")
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["plugin"]["provides"] == {"runtimes": ["hello"]}
    assert create_app_with(market, "greeter-3", "hello").status_code == 201
    assert json.loads((market.dep.cp.data_dir / "plugins.json").read_text()) == {"disabled": []}


def test_a_plugin_with_routes_needs_a_restart(market: Dashboard) -> None:
    with market.http("operator") as http:
        installed = http.post("/plugins/install", json={"name": "hello-pages"}, timeout=300)
    assert installed.status_code == 201, installed.text
    body = installed.json()
    assert body["restart_required"] is True
    assert body["plugins"] == [
        {"name": "hello_pages", "enabled": True, "error": None, "blueprints": ["hello_pages"]}
    ]
    assert plugins_of(market)["hello_pages"]["restart_required"] is True
    assert httpx.get(market.url + "/hello").status_code == 404  # not mounted yet

    restart(market)
    assert httpx.get(market.url + "/hello").json() == {"hello": "from a plugin"}
    with market.http("operator") as http:
        assert http.post("/plugins/hello_pages/disable").status_code == 200
        gone = httpx.get(market.url + "/hello", headers={"Accept": "application/json"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "PLG001"
        assert http.post("/plugins/hello_pages/enable").json()["restart_required"] is False
    assert httpx.get(market.url + "/hello").status_code == 200


def test_what_install_refuses(market: Dashboard) -> None:
    # Plugins are the instance's: an organisation's owner is not enough.
    for role in ("viewer", "member", "admin", "owner"):
        with market.http(role) as http:
            denied = http.post("/plugins/install", json={"name": "hello-runtime"})
            assert denied.status_code == 403 and denied.json()["error"]["code"] == "AUTH007"
            assert http.post("/plugins/runtime_pm2/disable").status_code == 403
    with market.http("operator") as http:
        unknown = http.post("/plugins/install", json={"name": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "PLG002"
        ghost = http.post("/plugins/install", json={"name": "ghost"}, timeout=300)
        assert ghost.status_code == 502 and ghost.json()["error"]["code"] == "PLG003"
        assert "serverflow-ghost" in ghost.json()["error"]["message"]
        # A catalog entry that looks like a pip option is never even listed.
        names = [p["name"] for p in http.get("/plugins/catalog").json()["plugins"]]
        assert names == ["hello-runtime", "hello-pages", "ghost"]
        missing = http.post("/plugins/no_such_plugin/enable")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "PLG001"
    assert pip("show", "serverflow-ghost", check=False).returncode != 0


# -- in-process: switching an installed plugin (runtime_pm2) on and off -----------------


def in_process(
    tmp_path: Path, **overrides: Any
) -> AbstractAsyncContextManager[ControlPlaneUnderTest]:
    return control_plane_with(f"sqlite://{tmp_path / 'serverflow.sqlite3'}", tmp_path, **overrides)


async def _create(cp: ControlPlaneUnderTest, tenant: Tenant, name: str) -> tuple[int, Any]:
    client = cp.client()
    if name == "first":
        await client.post("/api/v1/servers", json={"name": "web-1"}, headers=tenant.auth())
    made = await client.post(
        "/api/v1/apps",
        json={"name": name, "repo": "https://git.example/x.git", "servers": ["web-1"]},
        headers=tenant.auth(),
    )
    return made.status_code, await made.get_json()


async def test_disabling_a_plugin_removes_its_runtime_at_once(tmp_path: Path) -> None:
    async with in_process(tmp_path) as cp:
        tenant = await cp.tenant("Acme")
        operator = await cp.operator(tenant)
        client = cp.client()
        assert (await _create(cp, tenant, "first"))[0] == 201
        off = await client.post("/api/v1/plugins/runtime_pm2/disable", headers=operator)
        assert (await off.get_json())["plugin"]["status"] == "disabled"
        status, body = await _create(cp, tenant, "second")
        assert status == 400 and body["error"]["code"] == "APP002"
        on = await client.post("/api/v1/plugins/runtime_pm2/enable", headers=operator)
        assert (await on.get_json())["plugin"]["provides"] == {"runtimes": ["pm2"]}
        assert (await _create(cp, tenant, "third"))[0] == 201
        events = await (await client.get("/api/v1/events", headers=tenant.auth())).get_json()
        kinds = [e["kind"] for e in events["events"]]
        assert kinds.count("plugin.disabled") == 1 and kinds.count("plugin.enabled") == 1
        disabled = next(e for e in events["events"] if e["kind"] == "plugin.disabled")
        assert disabled["data"] == {"name": "runtime_pm2", "by": "token:operator-token"}


async def test_saved_choices_apply_at_start(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "plugins.json").write_text('{"disabled": ["runtime_pm2"]}')
    async with in_process(tmp_path) as cp:
        tenant = await cp.tenant("Acme")
        status, body = await _create(cp, tenant, "first")
        assert status == 400 and body["error"]["code"] == "APP002"
        listed = await (await cp.client().get("/api/v1/plugins", headers=tenant.auth())).get_json()
        pm2 = next(p for p in listed["plugins"] if p["name"] == "runtime_pm2")
        assert pm2["status"] == "disabled" and pm2["disabled_by_config"] is False
    # `serverflow plugins list` shows the dashboard's choice too.
    from serverflow_testkit.controlplane import cli_env, run_cli

    listed_cli = run_cli("plugins", "list", "--json", env=cli_env(tmp_path / "data"))
    rows = {r["name"]: r for r in json.loads(listed_cli.stdout)}
    assert rows["runtime_pm2"]["status"] == "disabled"


async def test_the_operators_disabled_list_wins(tmp_path: Path) -> None:
    async with in_process(tmp_path, disabled_plugins="runtime_pm2") as cp:
        tenant = await cp.tenant("Acme")
        operator = await cp.operator(tenant)
        client = cp.client()
        refused = await client.post("/api/v1/plugins/runtime_pm2/enable", headers=operator)
        assert refused.status_code == 409
        assert (await refused.get_json())["error"]["code"] == "PLG004"
        await sign_in(client, tenant.owner.email)
        page = await (await client.get("/plugins")).get_data(as_text=True)
        assert "SERVERFLOW_DISABLED_PLUGINS" in page
        assert 'data-name="runtime_pm2"' not in page  # no Enable button for it


async def test_the_catalog_can_come_from_a_url(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from serverflow.marketplace import Marketplace, MarketplaceError

    class Catalog(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/catalog.json"
            body = json.dumps(CATALOG).encode() if found else b"{}"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Catalog)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        settings = make_settings(
            tmp_path, "sqlite://:memory:", plugin_catalog=base + "/catalog.json"
        )
        market = Marketplace(settings, Plugins(load=False))
        assert [e.name for e in await market.entries()] == ["hello-runtime", "hello-pages", "ghost"]
        broken = Marketplace(
            make_settings(tmp_path, "", plugin_catalog=base + "/missing.json"),
            Plugins(load=False),
        )
        with pytest.raises(MarketplaceError) as failed:
            await broken.entries()
        assert failed.value.code == "PLG005" and "404" in failed.value.message
    finally:
        server.shutdown()
