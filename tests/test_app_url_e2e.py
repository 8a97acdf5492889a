"""Every deployed app has a URL, the same across releases (docs/deploys.md, "Every app has
a URL"): one app with a domain (HTTPS, a pebble certificate), one without (its public port
on the server), each deployed twice with the real CLI against the real control plane, a
real agent, pm2 and nginx (test_deploy_e2e's stack).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from serverflow_testkit.gitrepo import GitRepo
from tests.test_deploy_e2e import World, started_world

LOW = random.randrange(30_000, 32_000)
APP_PORTS = (LOW, LOW + 20)  # the control plane's public ports for apps without a domain


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with started_world({"SERVERFLOW_APP_PORTS": f"{APP_PORTS[0]}-{APP_PORTS[1]}"}) as world:
        yield world


def fetch(world: World, url: str) -> str:
    """GET the URL as a browser would: a domain through nginx (loopback, the domain as Host
    and SNI, pebble's root trusted), anything else directly."""
    parts = urlsplit(url)
    if parts.hostname and parts.hostname.endswith(".test"):
        if parts.scheme == "https":
            status, body = world.https(parts.hostname)
        else:
            answer = world.http(parts.hostname)
            status, body = answer.status_code, answer.text
    else:
        answer = httpx.get(url, timeout=5, follow_redirects=False)
        status, body = answer.status_code, answer.text
    assert status == 200, (url, status, body[:300])
    return body


def live_url(output: str) -> str:
    found = re.findall(r"^live: (\S+)$", output, re.M)
    assert len(found) == 1, output
    return found[0]


def release_ports(world: World, app: str) -> set[int]:
    """The ports the app's releases were started on, as their deploy logs say."""
    ports = set()
    for dep in world.deployments(app):
        lines = world.api("GET", f"/deployments/{dep['id']}/logs").json()["lines"]
        for line in lines:
            ports.update(int(p) for p in re.findall(r" on port (\d+)$", line["line"]))
    return ports


@pytest.mark.parametrize("domain", ["shop.url.test", None], ids=["domain", "no-domain"])
def test_deploy_prints_the_url_and_it_stays_across_releases(
    world: World, domain: str | None
) -> None:
    name = "shop" if domain else "tool"
    repo = GitRepo(world.base / "repos" / name)
    repo.commit("node", {"version.txt": f"{name}-v1"}, message="v1")
    where = ["--domain", domain] if domain else []
    world.cli(
        "apps", "create", name, "--server", "web-1", "--repo", repo.url,
        "--health-path", "/healthz", *where,
    )  # fmt: skip

    first = world.cli("deploy", name, "--wait")
    assert "==> live" in first.stdout, first.stdout + first.stderr
    url = live_url(first.stdout)
    if domain:
        assert url == f"https://{domain}"  # TLS on by default: a certificate was issued
    else:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        assert host == "127.0.0.1"  # the agent's address on its route to the control plane
        assert port is not None and APP_PORTS[0] <= port <= APP_PORTS[1]
    assert f"{name}-v1" in fetch(world, url)

    # The second release, with --json: the same URL, now answering with v2.
    repo.commit(files={"version.txt": f"{name}-v2"}, message="v2")
    second = world.cli("deploy", name, "--wait", "--json")
    [deployment] = json.loads(second.stdout)  # the logs went to stderr
    assert deployment["status"] == "live" and deployment["number"] == 2, second.stderr
    assert deployment["url"] == url and deployment["server"] == "web-1"
    assert f"{name}-v2" in fetch(world, url)

    # Each release ran on a fresh port of its own, beside the previous one.
    ports = release_ports(world, name)
    assert len(ports) == 2 and all(p != urlsplit(url).port for p in ports), ports

    app = world.api("GET", f"/apps/{name}").json()
    assert app["url"] == url and app["servers"][0]["url"] == url
    listed = world.cli("apps", "list").stdout
    assert any(line.split()[0] == name and url in line.split() for line in listed.splitlines())
