"""Certificates over ACME against a real pebble + certbot, served by a real nginx."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest

from serverflow_agent import builtin
from serverflow_agent import cli as agent_cli
from serverflow_agent.config import AgentConfig
from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.executor import Executor
from serverflow_agent.proxy import CertificateError, Proxy, ProxyError, Route
from serverflow_agent.proxy.certs import leaf_der, read_certificate
from serverflow_agent.proxy.probe import probe
from serverflow_agent.renewal import RENEW_ACTION, Renewer
from serverflow_contract import protocol
from serverflow_testkit.nginx import NginxServer, Upstream, start_nginx, world_readable_dir
from serverflow_testkit.pebble import PebbleServer, start_pebble, start_resolver

DOMAINS = ["shop.test", "www.shop.test"]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = world_readable_dir("sf-proxy-tls-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def nginx(base: Path) -> Iterator[NginxServer]:
    server = start_nginx(base / "nginx")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble(base: Path) -> Iterator[PebbleServer]:
    server = start_pebble(base / "pebble")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def section(base: Path, nginx: NginxServer, pebble: PebbleServer) -> dict[str, Any]:
    """The `deploy` section of agent.json for this nginx and pebble."""
    return {
        "nginx": nginx.config_section(base / "certs"),
        "acme": pebble.acme_section(base, base / "webroot"),
    }


@pytest.fixture(scope="module")
def settings(base: Path, section: dict[str, Any]) -> DeploySettings:
    return DeploySettings.from_config(base / "state", section)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    app = Upstream("shop")
    yield app
    app.close()


@pytest.fixture(scope="module")
def secured(settings: DeploySettings, upstream: Upstream) -> Proxy:
    """`shop` switched with tls=True once for the module: the issuance under test."""
    proxy = Proxy(settings)
    proxy.switch("shop", Route(DOMAINS, upstream_port=upstream.port), "r1", tls=True)
    return proxy


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30
    )


def https_get(nginx: NginxServer, pebble: PebbleServer, domain: str, path: str) -> str:
    """GET over HTTPS, resolving `domain` to 127.0.0.1 and verifying against pebble's root."""
    port = nginx.https_port
    done = curl(
        "--fail",
        "--resolve",
        f"{domain}:{port}:127.0.0.1",
        "--cacert",
        str(pebble.root()),
        f"https://{domain}:{port}{path}",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_switch_with_tls_serves_the_app_over_verified_https(
    secured: Proxy, nginx: NginxServer, pebble: PebbleServer
) -> None:
    for domain in DOMAINS:
        assert https_get(nginx, pebble, domain, "/cart") == "shop /cart\n"
    seen = json.loads(https_get(nginx, pebble, "shop.test", "/headers"))
    assert seen["x-forwarded-proto"] == "https"
    assert seen["host"] == "shop.test"

    # The wrong CA is refused: the chain really is pebble's.
    wrong = curl(
        "--resolve",
        f"shop.test:{nginx.https_port}:127.0.0.1",
        "--cacert",
        str(pebble.ca_bundle),
        f"https://shop.test:{nginx.https_port}/",
    )
    assert wrong.returncode != 0

    names, _ = read_certificate(secured.certificates.paths("shop.test")[0])
    assert sorted(names) == sorted(DOMAINS)


def test_http_redirects_to_https_except_the_acme_challenge(
    secured: Proxy, nginx: NginxServer, settings: DeploySettings
) -> None:
    answer = httpx.get(
        f"http://127.0.0.1:{nginx.http_port}/cart?item=1", headers={"Host": "www.shop.test"}
    )
    assert answer.status_code == 301
    assert answer.headers["location"] == f"https://www.shop.test:{nginx.https_port}/cart?item=1"

    challenges = settings.acme.webroot / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True, exist_ok=True)
    for path in (settings.acme.webroot / ".well-known", challenges):
        path.chmod(0o755)
    (challenges / "token-123").write_text("token-123.thumbprint")
    (challenges / "token-123").chmod(0o644)
    answer = httpx.get(
        f"http://127.0.0.1:{nginx.http_port}/.well-known/acme-challenge/token-123",
        headers={"Host": "shop.test"},
    )
    assert (answer.status_code, answer.text) == (200, "token-123.thumbprint")
    missing = httpx.get(
        f"http://127.0.0.1:{nginx.http_port}/.well-known/acme-challenge/nope",
        headers={"Host": "shop.test"},
    )
    assert missing.status_code == 404


def test_a_valid_certificate_is_reused(
    secured: Proxy, nginx: NginxServer, pebble: PebbleServer, upstream: Upstream
) -> None:
    cert, key = secured.certificates.paths("shop.test")
    before = (cert.read_bytes(), key.read_bytes())
    issued = _issued(secured)

    assert secured.certificates.ensure(["www.shop.test", "shop.test"][::-1]) == (cert, key)
    secured.switch("shop", Route(DOMAINS, upstream_port=upstream.port), "r2", tls=True)

    assert (cert.read_bytes(), key.read_bytes()) == before
    assert _issued(secured) == issued  # certbot asked pebble for nothing

    # Our installed copy lost: certbot's own still-valid one is installed again, not re-issued.
    cert.parent.unlink()
    assert secured.certificates.ensure(DOMAINS) == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert _issued(secured) == issued
    assert https_get(nginx, pebble, "shop.test", "/") == "shop /\n"
    assert probe(nginx.https_port, "shop.test", tls=True).release == "r2"


def test_renew_due_renews_and_nginx_presents_the_new_certificate(
    secured: Proxy, settings: DeploySettings, nginx: NginxServer, pebble: PebbleServer
) -> None:
    cert, _ = secured.certificates.paths("shop.test")
    old = leaf_der(cert)
    assert secured.renew_certificates().renewed == []  # years left: nothing to do

    # A threshold above the certificate's whole lifetime makes it due now.
    eager = dataclasses.replace(settings, acme=dataclasses.replace(settings.acme, renew_days=10**5))
    report = Proxy(eager).renew_certificates()

    assert report.renewed == ["shop.test"]
    assert report.failed == {}
    assert leaf_der(cert) != old
    assert probe(nginx.https_port, "shop.test", tls=True).certificate == leaf_der(cert)
    assert https_get(nginx, pebble, "www.shop.test", "/") == "shop /\n"


def test_the_agent_renews_due_certificates_on_its_own_timer(
    secured: Proxy, section: dict[str, Any], nginx: NginxServer, tmp_path: Path
) -> None:
    cert, _ = secured.certificates.paths("shop.test")
    old = leaf_der(cert)
    # An agent whose certificates are all due (threshold above their lifetime), checking
    # every 2 s: the real action runs in the real runner subprocess, certbot asks pebble.
    state_dir = tmp_path / "agent"
    state_dir.mkdir(mode=0o700)
    deploy = {**section, "acme": {**section["acme"], "renew_days": 10**5}}
    deploy["acme"]["renew_check_hours"] = 2 / 3600
    AgentConfig(
        url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9/agent",
        server_id="srv_renewal",
        org_id="org_renewal",
        control_plane_key=protocol.public_key_of(nacl.signing.SigningKey.generate()),
        deploy=deploy,
    ).save(state_dir)
    interval = agent_cli._renew_interval(state_dir, logging.getLogger("test"))
    assert interval == pytest.approx(2.0)
    spec = next(s for s in builtin.ACTIONS if s.name == RENEW_ACTION)
    reports: list[dict[str, Any]] = []

    async def report(found: dict[str, Any]) -> None:
        reports.append(found)

    async def until_first_report() -> None:
        task = asyncio.create_task(Renewer(Executor(state_dir), spec, interval, report).run())
        try:
            async with asyncio.timeout(120):
                while not reports:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()

    asyncio.run(until_first_report())

    assert reports[0] == {"renewed": ["shop.test"], "failed": {}}
    assert leaf_der(cert) != old
    assert probe(nginx.https_port, "shop.test", tls=True).certificate == leaf_der(cert)


def test_a_failed_issuance_leaves_the_previous_state_serving(
    secured: Proxy, settings: DeploySettings, nginx: NginxServer, upstream: Upstream, base: Path
) -> None:
    proxy = Proxy(settings)
    proxy.switch("blog", Route(["blog.test"], upstream_port=upstream.port), "b1")
    before = {p.name: p.read_text() for p in nginx.conf_dir.iterdir()}
    unreachable = dataclasses.replace(
        settings,
        acme=dataclasses.replace(
            settings.acme,
            directory_url="https://127.0.0.1:1/dir",
            config_dir=base / "certbot-unreachable",
        ),
    )
    failing = Proxy(unreachable)

    with pytest.raises(CertificateError) as refused:
        failing.switch("blog", Route(["blog.test"], upstream_port=upstream.port), "b2", tls=True)
    message = str(refused.value)
    assert "certbot could not obtain a certificate for blog.test" in message
    assert "127.0.0.1:1" in message
    with pytest.raises(CertificateError):
        failing.switch("news", Route(["news.test"], upstream_port=upstream.port), "n1", tls=True)

    assert {p.name: p.read_text() for p in nginx.conf_dir.iterdir()} == before
    plain = httpx.get(f"http://127.0.0.1:{nginx.http_port}/", headers={"Host": "blog.test"})
    assert plain.headers["x-serverflow-release"] == "b1"
    assert probe(nginx.https_port, "shop.test", tls=True).release is not None
    assert isinstance(refused.value, ProxyError)


def test_a_webroot_nginx_cannot_serve_is_caught_before_asking_the_ca(
    settings: DeploySettings, nginx: NginxServer, upstream: Upstream, tmp_path: Path
) -> None:
    # The agent's state directory is 0700: a webroot inside it is invisible to nginx's
    # workers, and every validation would fail at the CA (which rate-limits failures).
    private = dataclasses.replace(
        settings,
        acme=dataclasses.replace(
            settings.acme, webroot=tmp_path / "webroot", config_dir=tmp_path / "certbot"
        ),
    )
    proxy = Proxy(private, wait_timeout=1)
    with pytest.raises(CertificateError, match="nginx does not serve the ACME webroot") as caught:
        proxy.switch("hidden", Route(["hidden.test"], upstream_port=upstream.port), "h1", tls=True)
    assert "last: HTTP 404" in str(caught.value)
    assert "has no o+x" in str(caught.value)
    assert not (tmp_path / "certbot").exists()  # certbot never ran
    assert not (nginx.conf_dir / "hidden.conf").exists()
    assert not (nginx.conf_dir / "hidden.challenge.conf").exists()


def test_http01_is_really_validated_through_nginx(
    base: Path, nginx: NginxServer, upstream: Upstream
) -> None:
    """No ALWAYS_VALID: pebble resolves the domains (PowerDNS) and fetches each challenge
    from nginx's HTTP port, so the webroot, its permissions and the server blocks are real."""
    resolver = start_resolver(base / "pdns")
    pebble = start_pebble(base / "pebble-validating", nginx.http_port, resolver.port)
    try:
        raw = {
            "nginx": nginx.config_section(base / "certs-validated"),
            "acme": pebble.acme_section(base, base / "webroot"),
        }
        proxy = Proxy(DeploySettings.from_config(base / "state-validated", raw))
        domains = ["real.test", "www.real.test"]
        proxy.switch("real", Route(domains, upstream_port=upstream.port), "v1", tls=True)

        assert https_get(nginx, pebble, "www.real.test", "/") == "shop /\n"
        fetched = [
            line
            for line in (nginx.dir / "logs" / "access.log").read_text().splitlines()
            if "GET /.well-known/acme-challenge/" in line
            and '" 200 ' in line
            and "Pebble-VA" in line
        ]
        assert len(fetched) >= len(domains), fetched
    finally:
        pebble.stop()
        resolver.stop()


def _issued(proxy: Proxy) -> list[str]:
    """certbot's archive of issued certificates for shop.test (one file per issuance)."""
    archive = proxy.certificates.acme.config_dir / "config" / "archive" / "shop.test"
    return sorted(p.name for p in archive.glob("cert*.pem"))
