"""Debian's Chromium driven by Playwright (sync API), and the real things dashboard tests
drive with it: a `serverflow up` with users per role, and real agent processes.

Playwright's sync API cannot run inside pytest-asyncio's event loop: browser tests are
plain `def` tests. Never `playwright install`: the browser is /usr/bin/chromium.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from serverflow_testkit import missing
from serverflow_testkit.controlplane import Deployment, bootstrap, run_cli
from serverflow_testkit.protocol_peer import AgentProcess, register_agent

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"
INSTALL_TOKEN = re.compile(r"sfi_[0-9a-f]{32}_[A-Za-z0-9_-]{43}")


@contextmanager
def chromium(home: Path) -> Iterator[Browser]:
    """A headless Chromium whose profile and caches live under `home`."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        missing("playwright", "pip install playwright (the Python package; no browser download)")
        raise  # unreachable: missing() skips or fails
    if not CHROMIUM.exists():
        missing("chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    home.mkdir(parents=True, exist_ok=True)
    env: dict[str, str | float | bool] = {
        k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")
    }
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=env, headless=True
            )
        except Error as exc:
            missing("chromium", f"it does not start: {exc}")
            raise
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_page(
    browser: Browser, timeout_ms: float = 10_000, locale: str = "en-US"
) -> Iterator[Page]:
    """A page in a new context; fails the test if the page raised a JavaScript error."""
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(timeout_ms)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        # Leave the page first (bounded by the timeout): its live websocket and event
        # streams close as in a browser; a context closed mid-navigation once hung in CI.
        from playwright.sync_api import Error

        try:
            page.goto("about:blank")
        except Error:  # a navigation the test started is still going: closing is enough
            pass
        finally:
            context.close()
    assert not errors, f"JavaScript errors: {errors}"


# -- the control plane and its users --------------------------------------------------


class Dashboard:
    """A real control plane with an organisation "Acme" and a signed-in page helper."""

    def __init__(self, dep: Deployment, work: Path) -> None:
        self.dep = dep
        self.work = work
        self.url = dep.url
        self.agents: list[RealAgent] = []

    def user(self, email: str, role: str, operator: bool = False) -> str:
        """Create a user of Acme through the CLI (an instance operator too, if asked);
        returns the email."""
        run_cli(
            "users",
            "create",
            email,
            "--org",
            "acme",
            "--role",
            role,
            "--password-stdin",
            env=self.dep.cp.env,
            input=PASSWORD + "\n",
        )
        if operator:
            run_cli("operators", "add", email, env=self.dep.cp.env)
        return email

    def sign_in(self, page: Page, email: str) -> None:
        """Through the form, as a person would."""
        page.goto(self.url + "/login")
        page.get_by_label(re.compile("^(Email|Adresse e-mail)$")).fill(email)
        page.get_by_label(re.compile("^(Password|Mot de passe)$")).fill(PASSWORD)
        page.locator("form button[type=submit]").click()
        page.wait_for_url(re.compile(re.escape(self.url) + r"/(\?.*)?$"))

    def http(self, role: str = "owner") -> httpx.Client:
        return self.dep.http(role)

    def agent(self, token: str, name: str, start: bool = True) -> RealAgent:
        """A real agent for the server whose install token this is (stopped at teardown)."""
        agent = RealAgent(self.url, token, self.work / f"agent-{name}")
        self.agents.append(agent)
        return agent.start() if start else agent

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.dep.cp.stop()


def start_dashboard(work: Path, **env: str) -> Dashboard:
    settings = {"SERVERFLOW_HEARTBEAT_INTERVAL_MS": "500", **env}
    return Dashboard(bootstrap(work / "data", env=settings), work)


# -- real agents ----------------------------------------------------------------------


class RealAgent:
    """`serverflow-agent register` then `run`, from this virtualenv, in its own state dir."""

    def __init__(self, url: str, token: str, state: Path, env: dict[str, str] | None = None):
        self.url = url
        self.token = token
        self.state = state
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")}
        self.env.update(env or {})
        self.process = AgentProcess(state, self.env, state / "agent.log")

    def register(self) -> RealAgent:
        """Trade the install token for the agent's identity (writes agent.json)."""
        self.state.mkdir(parents=True, exist_ok=True)
        register_agent(self.url, self.token, self.state, self.env)
        return self

    def run(self) -> RealAgent:
        self.process.start()
        return self

    def start(self) -> RealAgent:
        return self.register().run()

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> None:
        self.process.stop()
