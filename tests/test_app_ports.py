"""Public ports and URLs of apps (docs/deploys.md, "Every app has a URL"): a port per app
and server from the `app_ports` range, kept across releases and settings changes, given
again after a deletion only once the range has come round; the URL the API shows.

The deployments here run against a control plane whose servers have no agent connected:
each one fails at the agent, after the control plane decided (and stored in the
deployment's spec) what the server would be sent. test_app_url_e2e.py has the real thing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tortoise.exceptions import IntegrityError

from serverflow.deploys.addresses import next_port
from serverflow.models import AppServer, Deployment, Server
from serverflow.tenancy import scoped
from tests.conftest import (
    BOTH_DATABASES,
    ControlPlaneUnderTest,
    Tenant,
    control_plane_with,
    sign_in,
)

COMMIT = "c" * 40
LOW = random.randrange(20_000, 29_000)
PORTS = (LOW, LOW + 2)  # three ports: the range comes round quickly


@pytest.fixture
async def cp(db_url: str, tmp_path: Path) -> AsyncIterator[ControlPlaneUnderTest]:
    async with control_plane_with(db_url, tmp_path, app_ports=PORTS) as cp:
        yield cp


class Api:
    def __init__(self, cp: ControlPlaneUnderTest, tenant: Tenant) -> None:
        self.cp, self.tenant = cp, tenant

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.cp.client().open(
            f"/api/v1{path}", method=method, json=body, headers=self.tenant.auth()
        )
        assert response.status_code < 300, await response.get_data(as_text=True)
        return await response.get_json() if response.status_code != 204 else None

    async def server(self, name: str) -> str:
        return str((await self.call("POST", "/servers", {"name": name}))["id"])

    async def app(self, name: str, servers: tuple[str, ...] = ("web-1",), **extra: Any) -> None:
        body = {"name": name, "servers": list(servers), "repo": "/srv/app.git", **extra}
        await self.call("POST", "/apps", body)

    async def deploy(self, app: str) -> list[dict[str, Any]]:
        """The spec each server would have been sent (the agents are not connected)."""
        queued = (await self.call("POST", f"/apps/{app}/deploy", {"commit": COMMIT}))["deployments"]
        specs = []
        for dep in queued:
            for _ in range(200):
                row = await self.call("GET", f"/deployments/{dep['id']}")
                if row["status"] in ("live", "failed"):
                    break
                await asyncio.sleep(0.05)
            assert row["status"] == "failed", row
            async with scoped(self.tenant.org.id):
                specs.append(dict((await Deployment.get(id=uuid.UUID(dep["id"]))).spec))
        return specs

    async def port(self, app: str) -> int | None:
        """The public port the last deployment of `app` (one server) would have served."""
        [spec] = await self.deploy(app)
        return spec.get("public_port")


@pytest.fixture
async def api(cp: ControlPlaneUnderTest) -> Api:
    api = Api(cp, await cp.tenant("Acme"))
    await api.server("web-1")
    return api


def test_ports_come_round_the_range() -> None:
    assert next_port((10, 12), set(), None) == 10
    assert next_port((10, 12), {10}, 10) == 11
    assert next_port((10, 12), {10, 11}, 11) == 12
    assert next_port((10, 12), {10, 12}, 12) == 11  # round again: the freed one
    assert next_port((10, 12), {11, 12}, 12) == 10
    assert next_port((10, 12), {10, 11, 12}, 11) is None
    assert next_port((10, 12), set(), 500) == 10  # the range changed since


@BOTH_DATABASES
async def test_a_port_per_app_kept_across_releases_and_settings(api: Api) -> None:
    await api.app("api")
    first = await api.port("api")
    assert first == LOW
    await api.app("site")
    assert await api.port("site") == LOW + 1  # unique on the server
    assert await api.port("api") == first  # a second release: the same port

    # Settings changes keep it: a fixed release port, the health check, the env...
    await api.call("PATCH", "/apps/api", {"port": 5005, "health_path": "/up"})
    await api.call("PUT", "/apps/api/env", {"set": {"A": "1"}})
    [spec] = await api.deploy("api")
    assert spec["public_port"] == first and spec["port"] == 5005
    # ...and so does a domain for a while: reached at the domain, the port stays its own.
    await api.call("PATCH", "/apps/api", {"domains": ["api.example.test"]})
    assert await api.port("api") is None
    await api.call("PATCH", "/apps/api", {"domains": []})
    assert await api.port("api") == first

    # An app with a domain never takes one.
    await api.app("shop", domains=["shop.example.test"])
    assert await api.port("shop") is None
    async with scoped(api.tenant.org.id):
        assert await AppServer.filter(public_port__isnull=False).count() == 2


@BOTH_DATABASES
async def test_a_deleted_apps_port_is_given_again_once_the_range_came_round(api: Api) -> None:
    for name in ("api", "site"):
        await api.app(name)
        await api.port(name)
    await api.call("DELETE", "/apps/site")  # frees LOW + 1
    await api.app("blog")
    assert await api.port("blog") == LOW + 2  # not the port site's users knew
    await api.app("docs")
    assert await api.port("docs") == LOW + 1  # the range came round: the free one
    await api.app("wiki")
    queued = await api.call("POST", "/apps/wiki/deploy", {"commit": COMMIT})
    dep_id = queued["deployments"][0]["id"]
    for _ in range(200):
        failed = await api.call("GET", f"/deployments/{dep_id}")
        if failed["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert failed["reason"].startswith(f"every public port of {LOW}-{LOW + 2} is taken on web-1")

    # Another server has ports of its own.
    await api.server("web-2")
    await api.app("mail", servers=("web-2",))
    assert await api.port("mail") == LOW

    # Two apps cannot share a port on a server, even written past the allocation.
    async with scoped(api.tenant.org.id):
        web1 = await Server.get(name="web-1")
        wiki = await AppServer.get(server_id=web1.id, public_port__isnull=True)
        with pytest.raises(IntegrityError):
            async with scoped(api.tenant.org.id):
                await AppServer.filter(id=wiki.id).update(public_port=LOW)


@BOTH_DATABASES
async def test_the_url_of_an_app(api: Api) -> None:
    await api.server("web-2")
    await api.app("api", servers=("web-1", "web-2"))
    await api.app("shop", domains=["shop.example.test", "www.shop.example.test"])
    await api.app("plain", domains=["plain.example.test"], tls=False)
    assert (await api.call("GET", "/apps/shop"))["url"] == "https://shop.example.test"
    assert (await api.call("GET", "/apps/plain"))["url"] == "http://plain.example.test"

    app = await api.call("GET", "/apps/api")
    assert app["url"] is None  # nothing live yet
    assert [s["url"] for s in app["servers"]] == [None, None]
    await api.deploy("api")
    async with scoped(api.tenant.org.id):
        # What a live deploy records: the agent served the port and said where it is.
        await AppServer.all().update(public_port_served=True)
        await Server.filter(name="web-1").update(address="203.0.113.7")
        await Server.filter(name="web-2").update(address="2001:db8::2")
    app = await api.call("GET", "/apps/api")
    assert app["url"] == f"http://203.0.113.7:{LOW}"
    assert {s["name"]: (s["public_port"], s["url"]) for s in app["servers"]} == {
        "web-1": (LOW, f"http://203.0.113.7:{LOW}"),
        "web-2": (LOW, f"http://[2001:db8::2]:{LOW}"),
    }
    # Without a reported address: the host name it registered with, if others can resolve
    # it; else no URL.
    async with scoped(api.tenant.org.id):
        await Server.filter(name="web-1").update(address=None, hostname="web-1.example.test")
        await Server.filter(name="web-2").update(address=None, hostname="localhost")
    app = await api.call("GET", "/apps/api")
    assert [s["url"] for s in app["servers"]] == [f"http://web-1.example.test:{LOW}", None]
    listed = {a["name"]: a["url"] for a in (await api.call("GET", "/apps"))["apps"]}
    assert listed == {
        "api": f"http://web-1.example.test:{LOW}",
        "plain": "http://plain.example.test",
        "shop": "https://shop.example.test",
    }
    browser = api.cp.client()
    await sign_in(browser, api.tenant.owner.email)
    page = await browser.get("/apps/api")
    assert page.status_code == 200
    html = await page.get_data(as_text=True)
    assert f'<a href="http://web-1.example.test:{LOW}" rel="noopener noreferrer">' in html
