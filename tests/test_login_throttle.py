"""Sign-in throttling: per account and source address, an exponential delay, never a lockout."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from serverflow.controlplane import EXTENSION, ControlPlane
from serverflow.login_throttle import MAX_DELAY_SECONDS, delay
from serverflow.models import LoginFailure, UserSession
from tests.conftest import BOTH_DATABASES, PASSWORD, ControlPlaneUnderTest

if TYPE_CHECKING:
    from quart.typing import TestClientProtocol

WRONG = "not the password at all"
HERE, THERE = "203.0.113.7", "198.51.100.20"


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def frozen(control_plane: ControlPlaneUnderTest) -> Clock:
    clock = Clock()
    cp: ControlPlane = control_plane.app.extensions[EXTENSION]
    cp.clock = clock
    return clock


class Browser:
    """A browser at one source address, signing in through the dashboard form."""

    def __init__(self, control_plane: ControlPlaneUnderTest, address: str) -> None:
        self.client: TestClientProtocol = control_plane.client()
        self.scope = {"client": (address, 50000)}
        self.csrf = ""

    async def sign_in(self, email: str, password: str) -> tuple[int, str, str | None]:
        """POST /login: the status, the page's error code (if any) and Retry-After."""
        if not self.csrf:
            page = await (await self.client.get("/login", scope_base=self.scope)).get_data(
                as_text=True
            )
            self.csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        response = await self.client.post(
            "/login",
            form={"csrf_token": self.csrf, "email": email, "password": password},
            scope_base=self.scope,
        )
        page = await response.get_data(as_text=True)
        code = page.split('data-code="', 1)[1].split('"', 1)[0] if "data-code" in page else ""
        return response.status_code, code, response.headers.get("Retry-After")


async def fail(browser: Browser, email: str, times: int) -> None:
    for _ in range(times):
        assert (await browser.sign_in(email, WRONG))[:2] == (401, "AUTH003")


@BOTH_DATABASES
async def test_failures_from_one_address_do_not_lock_out_another(
    control_plane: ControlPlaneUnderTest,
) -> None:
    clock = frozen(control_plane)
    email = (await control_plane.tenant("Acme")).owner.email
    attacker, owner = Browser(control_plane, HERE), Browser(control_plane, THERE)
    limit = control_plane.settings.login_max_failures
    await fail(attacker, email, limit)

    # The owner, at another address, signs in with the right password at once.
    assert (await owner.sign_in(email, PASSWORD))[0] == 302
    assert await UserSession.all().count() == 1

    # The first address waits, and its password is not even checked meanwhile.
    status, code, retry_after = await attacker.sign_in(email, PASSWORD)
    assert (status, code, retry_after) == (429, "AUTH005", "1")
    assert await UserSession.all().count() == 1
    assert await LoginFailure.filter(email=email, ip=HERE).count() == limit

    # Once the delay has passed, the right password works; the success resets the counter.
    clock.advance(1)
    assert (await attacker.sign_in(email, PASSWORD))[0] == 302
    assert await LoginFailure.filter(email=email, ip=HERE).count() == 0
    await fail(attacker, email, limit)  # free attempts again
    assert (await attacker.sign_in(email, WRONG))[0] == 429


async def test_the_delay_doubles_with_each_further_failure(
    control_plane: ControlPlaneUnderTest,
) -> None:
    clock = frozen(control_plane)
    email = (await control_plane.tenant("Acme")).owner.email
    browser = Browser(control_plane, HERE)
    await fail(browser, email, control_plane.settings.login_max_failures)
    for wait in (1, 2, 4, 8):
        assert await browser.sign_in(email, WRONG) == (429, "AUTH005", str(wait))
        clock.advance(wait - 0.5)
        assert await browser.sign_in(email, PASSWORD) == (429, "AUTH005", "1")
        clock.advance(0.5)
        await fail(browser, email, 1)
    assert (await browser.sign_in(email, PASSWORD))[2] == "16"
    assert delay(1000, 5) == MAX_DELAY_SECONDS  # capped at 15 minutes


async def test_failures_outside_the_window_no_longer_count(
    control_plane: ControlPlaneUnderTest,
) -> None:
    clock = frozen(control_plane)
    email = (await control_plane.tenant("Acme")).owner.email
    browser = Browser(control_plane, HERE)
    limit = control_plane.settings.login_max_failures
    await fail(browser, email, limit)
    clock.advance(control_plane.settings.login_window_minutes * 60 + 1)
    await fail(browser, email, limit)  # the old ones were forgotten: free attempts again
    assert await LoginFailure.filter(email=email).count() == limit


async def test_one_address_guessing_many_accounts_is_slowed_down(
    control_plane: ControlPlaneUnderTest,
) -> None:
    frozen(control_plane)
    email = (await control_plane.tenant("Acme")).owner.email
    sprayer = Browser(control_plane, HERE)
    for n in range(control_plane.settings.login_max_failures * 4):
        await fail(sprayer, f"user{n}@acme.test", 1)
    status, code, retry_after = await sprayer.sign_in(email, PASSWORD)
    assert (status, code, retry_after) == (429, "AUTH005", "1")
    assert (await Browser(control_plane, THERE).sign_in(email, PASSWORD))[0] == 302


@BOTH_DATABASES
async def test_the_api_password_change_is_throttled_the_same_way(
    control_plane: ControlPlaneUnderTest,
) -> None:
    clock = frozen(control_plane)
    email = (await control_plane.tenant("Acme")).owner.email
    here = Browser(control_plane, HERE)
    assert (await here.sign_in(email, PASSWORD))[0] == 302

    async def change(current: str) -> tuple[int, str, str | None]:
        response = await here.client.post(
            "/api/v1/me/password",
            headers={"X-CSRF-Token": here.csrf},
            json={"current_password": current, "new_password": "a much better passphrase"},
            scope_base=here.scope,
        )
        body = await response.get_json() if response.status_code != 204 else None
        code = body["error"]["code"] if body else ""
        return response.status_code, code, response.headers.get("Retry-After")

    for _ in range(control_plane.settings.login_max_failures):
        assert (await change(WRONG))[:2] == (401, "AUTH003")
    # Waiting: even the right current password is refused, and nothing changes.
    assert await change(PASSWORD) == (429, "AUTH005", "1")
    assert (await here.client.get("/api/v1/me", scope_base=here.scope)).status_code == 200
    # Another address signs in meanwhile.
    assert (await Browser(control_plane, THERE).sign_in(email, PASSWORD))[0] == 302
    clock.advance(1)
    assert (await change(PASSWORD))[0] == 204
    assert (await Browser(control_plane, THERE).sign_in(email, PASSWORD))[0] == 401
