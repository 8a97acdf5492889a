"""The README's picture of the dashboard, made on purpose rather than by the test suite.

    .venv/bin/python -m serverflow_testkit.screenshot [--output docs/images/overview.png]

starts a throwaway control plane with demo data (organisation Acme, two servers with real
agents online, two apps), signs in with Debian's Chromium and writes the overview page as
a PNG. tests/test_web_browser.py takes the same picture into its temp dir.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from serverflow_testkit import wait_for
from serverflow_testkit.browser import Dashboard, browser_page, chromium, start_dashboard

if TYPE_CHECKING:
    from playwright.sync_api import Page

OUTPUT = Path("docs/images/overview.png")
TIMEOUT = 30_000  # ms: the agents' first metrics
DEMO_SERVERS = ("web-1", "db-1")
DEMO_APPS = (
    {"name": "shop", "repo": "https://git.example.test/shop.git", "servers": ["web-1"]},
    {"name": "blog", "repo": "https://git.example.test/blog.git", "servers": ["db-1"]},
)


def add_demo_data(dash: Dashboard) -> list[str]:
    """Servers with real agents, online, and apps placed on them; returns the server ids."""
    ids = []
    with dash.http() as http:

        def online(server_id: str) -> bool:
            return bool(http.get(f"/servers/{server_id}").json()["status"] == "online")

        for name in DEMO_SERVERS:
            server = http.post("/servers", json={"name": name}).json()
            dash.agent(server["install"]["token"], name)
            ids.append(str(server["id"]))
        for server_id in ids:
            wait_for(lambda: online(server_id), what=f"server {server_id} online")  # noqa: B023
        for app in DEMO_APPS:
            made = http.post("/apps", json={**app, "domains": [f"{app['name']}.example.test"]})
            assert made.status_code == 201, made.text
    return ids


def take_overview(dash: Dashboard, page: Page, server_ids: list[str], path: Path) -> Path:
    """Sign in, wait until every server shows live figures, and save the overview page."""
    from playwright.sync_api import expect

    dash.sign_in(page, dash.user("shots@acme.test", "owner"))
    for server_id in server_ids:
        expect(
            page.locator(f'tr[data-server-id="{server_id}"] [data-metric="memory"] [data-value]')
        ).to_have_text(re.compile(r"%$"), timeout=TIMEOUT)
    expect(page.locator("#live-state")).to_have_text("Live updates on")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serverflow_testkit.screenshot", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help=f"PNG to write (default {OUTPUT})"
    )
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="sf-screenshot-") as work:
            dash = start_dashboard(Path(work) / "dashboard")
            try:
                server_ids = add_demo_data(dash)
                with chromium(Path(work) / "chromium-home") as browser:
                    with browser_page(browser) as page:
                        take_overview(dash, page, server_ids, args.output)
            finally:
                dash.stop()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:  # a missing component
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
