"""The proxy against a real nginx: routing, zero-downtime switches, refused configurations."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.proxy import Proxy, ProxyError, Route
from serverflow_agent.proxy.nginx import Site, Tls
from serverflow_testkit import free_port
from serverflow_testkit.nginx import NginxServer, Upstream, start_nginx, world_readable_dir
from serverflow_testkit.tls import CertificateAuthority

RELEASE = "x-serverflow-release"


@pytest.fixture(scope="module")
def nginx() -> Iterator[NginxServer]:
    base = world_readable_dir("sf-proxy-nginx-")
    server = start_nginx(base)
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def proxy(nginx: NginxServer, tmp_path: Path) -> Iterator[Proxy]:
    raw = {
        "nginx": nginx.config_section(tmp_path / "certs"),
        "acme": {"webroot": str(nginx.dir / "webroot")},
    }
    yield Proxy(DeploySettings.from_config(tmp_path / "state", raw), wait_timeout=10)
    nginx.reset()


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    started = [Upstream("blue"), Upstream("green")]
    yield started
    for upstream in started:
        upstream.close()


def get(nginx: NginxServer, host: str, path: str = "/", **headers: str) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{nginx.http_port}{path}", headers={"Host": host, **headers}, timeout=5
    )


def reloads(nginx: NginxServer) -> int:
    return nginx.error_log.read_text().count("signal 1 (SIGHUP)")


def test_switch_routes_the_domain_to_the_upstream(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    blue = upstreams[0]
    proxy.switch("shop", Route(["shop.test", "www.shop.test"], upstream_port=blue.port), "r1")

    for host in ("shop.test", "WWW.shop.test"):
        answer = get(nginx, host, "/cart")
        assert answer.status_code == 200
        assert answer.text == "blue /cart\n"
        assert answer.headers[RELEASE] == "r1"
    seen = json.loads(get(nginx, "shop.test", "/headers", Upgrade="websocket").text)
    assert seen["host"] == "shop.test"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["upgrade"] == "websocket"
    assert seen["connection"] == "upgrade"
    assert proxy.current_release("shop") == "r1"
    # A name no app claims is not routed to the app.
    other = get(nginx, "nobody.test")
    assert other.status_code == 404
    assert RELEASE not in other.headers


def test_a_public_port_serves_one_app_whatever_the_host(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    blue, green = upstreams
    port = free_port()
    proxy.switch("api", Route([], upstream_port=blue.port, public_port=port), "r1")
    for host in ("203.0.113.7", f"203.0.113.7:{port}", "anything.test"):
        answer = httpx.get(f"http://127.0.0.1:{port}/items", headers={"Host": host}, timeout=5)
        assert (answer.status_code, answer.text) == (200, "blue /items\n")
        assert answer.headers[RELEASE] == "r1"
    assert (
        json.loads(httpx.get(f"http://127.0.0.1:{port}/headers", timeout=5).text)["host"]
        == f"127.0.0.1:{port}"
    )
    assert get(nginx, "api.test").status_code == 404  # no domain: not on the HTTP port

    # The next release, on the same port; then a domain as well.
    proxy.switch("api", Route([], upstream_port=green.port, public_port=port), "r2")
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "green /\n"
    proxy.switch("api", Route(["api.test"], upstream_port=green.port, public_port=port), "r3")
    assert get(nginx, "api.test").headers[RELEASE] == "r3"
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).headers[RELEASE] == "r3"

    # A port is one app's: not another's, not a port another program has, not nginx's own.
    before = {p.name: p.read_text() for p in nginx.conf_dir.iterdir()}
    with pytest.raises(ProxyError, match="already the public port of app api"):
        proxy.switch("other", Route([], upstream_port=blue.port, public_port=port), "o1")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        with pytest.raises(ProxyError, match=f"port {taken}, the public port of app other, is in"):
            proxy.switch("other", Route([], upstream_port=blue.port, public_port=taken), "o1")
    with pytest.raises(ProxyError, match="nginx's HTTP or HTTPS port"):
        proxy.switch("other", Route([], upstream_port=blue.port, public_port=nginx.http_port), "o1")
    assert {p.name: p.read_text() for p in nginx.conf_dir.iterdir()} == before

    proxy.remove("api")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert get(nginx, "api.test").status_code == 404


def test_websockets_pass_through(nginx: NginxServer, proxy: Proxy) -> None:
    def echo(connection: ServerConnection) -> None:
        for message in connection:
            connection.send(f"echo {message}")

    with serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        proxy.switch("chat", Route(["chat.test"], upstream_port=port), "r1")
        sock = socket.create_connection(("127.0.0.1", nginx.http_port))
        with connect("ws://chat.test/socket", sock=sock) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "echo hello"
        server.shutdown()


def test_switching_releases_fails_no_request(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    blue, green = upstreams
    proxy.switch("shop", Route(["shop.test"], upstream_port=blue.port), "r0")
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def hammer() -> None:
        # A fresh connection per request, like a browser's first request to a site.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=limits, timeout=5) as client:
            while not stop.is_set():
                try:
                    answer = client.get(
                        f"http://127.0.0.1:{nginx.http_port}/", headers={"Host": "shop.test"}
                    )
                    results.append((answer.status_code, answer.text))
                except httpx.HTTPError as exc:
                    results.append((0, repr(exc)))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(1, 7):
            target = green if n % 2 else blue
            proxy.switch("shop", Route(["shop.test"], upstream_port=target.port), f"r{n}")
            assert get(nginx, "shop.test").text == f"{target.name} /\n"
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    assert {text for _, text in results} == {"blue /\n", "green /\n"}
    assert len(results) > 50


def test_static_root_and_path_prefixes(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    site = nginx.dir / "static-release"
    (site / "assets").mkdir(parents=True)
    (site / "index.html").write_text("<h1>home</h1>\n")
    (site / "assets" / "app.js").write_text("console.log(1)\n")
    for path in (site, site / "assets"):
        path.chmod(0o755)

    proxy.switch("docs", Route(["docs.test"], static_root=str(site)), "s1")
    assert get(nginx, "docs.test").text == "<h1>home</h1>\n"
    assert get(nginx, "docs.test", "/assets/app.js").text == "console.log(1)\n"
    spa = get(nginx, "docs.test", "/some/client/route")
    assert (spa.status_code, spa.text) == (200, "<h1>home</h1>\n")
    assert spa.headers[RELEASE] == "s1"

    # The same files under a prefix, and an upstream under another prefix of its own domain.
    proxy.switch("guide", Route(["guide.test"], static_root=str(site), path="/guide"), "g1")
    assert get(nginx, "guide.test", "/guide/assets/app.js").text == "console.log(1)\n"
    assert get(nginx, "guide.test", "/guide/").text == "<h1>home</h1>\n"
    assert get(nginx, "guide.test", "/guide/deep/link").text == "<h1>home</h1>\n"
    assert get(nginx, "guide.test", "/guide").status_code == 301
    assert get(nginx, "guide.test", "/elsewhere").status_code == 404

    blue = upstreams[0]
    proxy.switch("api", Route(["api.test"], upstream_port=blue.port, path="/v1/"), "a1")
    assert get(nginx, "api.test", "/v1/items").text == "blue /v1/items\n"
    assert get(nginx, "api.test", "/v1").text == "blue /v1\n"
    assert get(nginx, "api.test", "/").status_code == 404
    assert get(nginx, "api.test", "/").headers[RELEASE] == "a1"


def test_a_static_root_nginx_cannot_read_is_refused(
    nginx: NginxServer, proxy: Proxy, tmp_path: Path
) -> None:
    private = tmp_path / "releases" / "s1"  # pytest's tmp_path is 0700, like a state dir
    private.mkdir(parents=True)
    (private / "index.html").write_text("hi")
    with pytest.raises(ProxyError, match="nginx's workers cannot read the static root") as refused:
        proxy.switch("docs", Route(["docs.test"], static_root=str(private)), "s1")
    assert "is not searchable by other users" in str(refused.value)
    with pytest.raises(ProxyError, match="is not a directory"):
        proxy.switch("docs", Route(["docs.test"], static_root=str(tmp_path / "nope")), "s1")
    assert not (nginx.conf_dir / "docs.conf").exists()


BAD_SWITCHES = [
    ("bad", Route(["shop.test; }"], upstream_port=1), "r1", "invalid domain"),
    ("bad", Route(["*.shop.test"], upstream_port=1), "r1", "invalid domain"),
    ("bad", Route(["localhost"], upstream_port=1), "r1", "at least two labels"),
    ("bad", Route(["-shop.test"], upstream_port=1), "r1", "invalid domain"),
    ("bad", Route(["a" * 64 + ".test"], upstream_port=1), "r1", "invalid domain"),
    ("bad", Route(["10.0.0.1"], upstream_port=1), "r1", "IP address"),
    ("bad", Route([], upstream_port=1), "r1", "at least one domain"),
    ("bad", Route([], upstream_port=1, public_port=70000), "r1", "invalid port"),
    ("bad", Route([], upstream_port=1, public_port=True), "r1", "invalid port"),  # type: ignore[arg-type]
    ("bad", Route(["shop.test; }"], upstream_port=1, public_port=9), "r1", "invalid domain"),
    ("bad", Route("shop.test", upstream_port=1), "r1", "a list of host names"),  # type: ignore[arg-type]
    ("bad", Route(["ok.test"]), "r1", "exactly one of"),
    ("bad", Route(["ok.test"], upstream_port=70000), "r1", "invalid upstream port"),
    ("bad", Route(["ok.test"], static_root="rel/dir"), "r1", "invalid static root"),
    ("bad", Route(["ok.test"], static_root="/srv/$x;"), "r1", "invalid static root"),
    ("bad", Route(["ok.test"], upstream_port=1, path="/a/../b"), "r1", "invalid path"),
    ("bad", Route(["ok.test"], upstream_port=1, path="/a{b"), "r1", "invalid path"),
    ("bad", Route(["ok.test"], upstream_port=1), 'r1" always; x', "invalid release"),
    ("../etc", Route(["ok.test"], upstream_port=1), "r1", "invalid app name"),
    ("00-serverflow", Route(["ok.test"], upstream_port=1), "r1", "invalid app name"),
]


def test_values_that_would_break_a_server_block_are_refused_before_writing(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    proxy.switch("shop", Route(["shop.test"], upstream_port=upstreams[0].port), "r1")
    before = {p.name: p.read_text() for p in nginx.conf_dir.iterdir()}
    count = reloads(nginx)

    for app, route, release, complaint in BAD_SWITCHES:
        for tls in (False, True):
            with pytest.raises(ProxyError, match=re.escape(complaint)):
                proxy.switch(app, route, release, tls=tls)

    assert {p.name: p.read_text() for p in nginx.conf_dir.iterdir()} == before
    assert reloads(nginx) == count
    assert not (nginx.dir / "webroot").exists()  # nothing asked of the CA either
    assert get(nginx, "shop.test").headers[RELEASE] == "r1"


def test_a_domain_nginx_rejects_is_rolled_back_and_others_keep_serving(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    blue, green = upstreams
    proxy.switch("shop", Route(["shop.test"], upstream_port=blue.port), "r1")
    proxy.switch("blog", Route(["blog.test"], upstream_port=green.port), "b1")
    before = {p.name: p.read_text() for p in nginx.conf_dir.iterdir()}
    # A valid host name (RFC 1035: labels up to 63, names up to 253), yet longer than
    # nginx's server_names_hash_bucket_size allows: `nginx -t` fails.
    long_name = "a" * 63 + "." + "b" * 63 + ".example.test"

    with pytest.raises(ProxyError) as refused:
        proxy.switch("blog", Route(["blog.test", long_name], upstream_port=blue.port), "b2")
    assert "nginx refused the configuration for app blog" in str(refused.value)
    assert "server_names_hash_bucket_size" in str(refused.value)
    assert "previous configuration was put back" in str(refused.value)
    with pytest.raises(ProxyError, match="server_names_hash"):
        proxy.switch("fresh", Route([long_name], upstream_port=blue.port), "f1")

    assert {p.name: p.read_text() for p in nginx.conf_dir.iterdir()} == before
    assert get(nginx, "shop.test").text == "blue /\n"
    assert get(nginx, "blog.test").text == "green /\n"
    assert get(nginx, "blog.test").headers[RELEASE] == "b1"


def test_a_domain_claimed_elsewhere_is_refused(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    blue, green = upstreams
    proxy.switch("shop", Route(["shop.test"], upstream_port=blue.port), "r1")
    with pytest.raises(ProxyError, match="already routed to app shop"):
        proxy.switch("copy", Route(["www.copy.test", "shop.test"], upstream_port=green.port), "c1")

    # A server block written by hand (not ServerFlow's): nginx -t passes with only a
    # warning and would silently ignore one of the two, so the change is refused.
    (nginx.conf_dir / "zz-by-hand.conf").write_text(
        f"server {{ listen {nginx.http_port}; server_name legacy.test; return 200 legacy; }}\n"
    )
    with pytest.raises(ProxyError, match="another nginx server block already uses"):
        proxy.switch("legacy", Route(["legacy.test"], upstream_port=green.port), "l1")
    assert not (nginx.conf_dir / "legacy.conf").exists()
    assert get(nginx, "shop.test").text == "blue /\n"


def test_a_reload_nginx_cannot_apply_is_detected_and_rolled_back(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream], tmp_path: Path
) -> None:
    blue = upstreams[0]
    proxy.switch("shop", Route(["shop.test"], upstream_port=blue.port), "r1")
    issued = CertificateAuthority(tmp_path / "ca").issue("secure")
    site = Site("secure", Route(["secure.test"], upstream_port=blue.port), "t1")
    # Something else holds the HTTPS port: `nginx -t` passes, `nginx -s reload` exits 0,
    # and the master keeps the old configuration (it logs the bind error).
    with socket.create_server(("0.0.0.0", nginx.https_port)):
        with pytest.raises(ProxyError, match="did not serve release t1 of app secure"):
            proxy.nginx.apply(
                Site(site.app, site.route, site.release, Tls(issued.cert, issued.key)), 2
            )
    assert not (nginx.conf_dir / "secure.conf").exists()
    assert get(nginx, "shop.test").headers[RELEASE] == "r1"
    assert "Address already in use" in nginx.error_log.read_text()

    # With the port free again the same change goes through.
    proxy.nginx.apply(Site(site.app, site.route, site.release, Tls(issued.cert, issued.key)))
    assert get(nginx, "secure.test").status_code == 301


def test_a_change_cut_short_by_a_crash_is_undone_by_the_next_one(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream], tmp_path: Path
) -> None:
    blue, green = upstreams
    proxy.switch("shop", Route(["shop.test"], upstream_port=blue.port), "r1")
    before = (nginx.conf_dir / "shop.conf").read_text()
    marker = tmp_path / "validating.pid"
    # Another agent process whose `nginx -t` hangs: it gets killed while the new file is
    # on disk and not yet validated.
    script = f"""
from pathlib import Path
from serverflow_agent.deploy.settings import NginxSettings
from serverflow_agent.proxy import Route
from serverflow_agent.proxy.nginx import Nginx, Site
settings = NginxSettings(
    conf_dir=Path({str(nginx.conf_dir)!r}),
    test=("sh", "-c", "echo $$ > {marker}; exec sleep 60"),
    reload={nginx.reload_argv!r},
    http_port={nginx.http_port},
)
site = Site("shop", Route(["shop.test"], upstream_port={green.port}), "r2")
Nginx(settings, Path({str(nginx.dir / "webroot")!r})).apply(site)
"""
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not (marker.exists() and marker.read_text().strip()):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert '"release": "r2"' in (nginx.conf_dir / "shop.conf").read_text()
    finally:
        child.kill()
        child.wait()
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGKILL)

    proxy.switch("blog", Route(["blog.test"], upstream_port=green.port), "b1")

    assert (nginx.conf_dir / "shop.conf").read_text() == before
    assert get(nginx, "shop.test").text == "blue /\n"
    assert get(nginx, "blog.test").text == "green /\n"


def test_the_same_switch_twice_does_not_reload(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    route = Route(["shop.test"], upstream_port=upstreams[0].port)
    proxy.switch("shop", route, "r1")
    count = reloads(nginx)
    proxy.switch("shop", route, "r1")
    assert reloads(nginx) == count


def test_remove_stops_routing_only_that_app(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    blue, green = upstreams
    proxy.switch("shop", Route(["shop.test"], upstream_port=blue.port), "r1")
    proxy.switch("blog", Route(["blog.test"], upstream_port=green.port), "b1")

    proxy.remove("shop")
    proxy.remove("never-deployed")

    gone = get(nginx, "shop.test")
    assert gone.status_code == 404
    assert RELEASE not in gone.headers
    assert get(nginx, "blog.test").text == "green /\n"
    assert proxy.current_release("shop") is None
    # The domain is free for another app now.
    proxy.switch("shop2", Route(["shop.test"], upstream_port=green.port), "s1")
    assert get(nginx, "shop.test").text == "green /\n"


def test_concurrent_switches_are_serialised(
    nginx: NginxServer, proxy: Proxy, upstreams: list[Upstream]
) -> None:
    errors: list[BaseException] = []

    def deploy(n: int) -> None:
        try:
            for release in range(2):
                port = upstreams[(n + release) % 2].port
                proxy.switch(f"app{n}", Route([f"app{n}.test"], upstream_port=port), f"r{release}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deploy, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for n in range(4):
        assert get(nginx, f"app{n}.test").headers[RELEASE] == "r1"
