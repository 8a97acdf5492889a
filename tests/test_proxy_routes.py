"""What may reach an nginx file: normalised values, and nothing that changes nginx's syntax."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serverflow_agent.deploy.settings import NginxSettings
from serverflow_agent.proxy import ProxyError, Route
from serverflow_agent.proxy.nginx import Site, render
from serverflow_agent.proxy.routes import (
    check_domain,
    check_fs_path,
    check_path,
    check_release,
    checked,
)

# Characters that could end a directive, open or close a block, quote, or expand a variable.
NGINX_SYNTAX = re.compile(r"[\s;{}'\"$#\\]")
# Mostly characters that are fine, plus each dangerous one, shaped like the real value so
# that many draws are accepted.
BAD = " \t\n;{}'\"$#\\"
NEAR_MISSES = st.one_of(st.text(max_size=80), st.text(alphabet="ab9.-_/~@+" + BAD, max_size=40))


def _shaped(alphabet: str, separator: str, prefix: str) -> st.SearchStrategy[str]:
    part = st.one_of(
        st.text(alphabet=alphabet, min_size=1, max_size=8),
        st.text(alphabet=alphabet + BAD, min_size=1, max_size=8),
    )
    parts = st.lists(part, max_size=4)
    return st.one_of(NEAR_MISSES, parts.map(lambda p: prefix + separator.join(p)))


DOMAINS = _shaped("abc", ".", "")
PATHS = _shaped("ab9._~-", "/", "/")
RELEASES = _shaped("ab9._-", "", "r")
FS_PATHS = _shaped("ab9._@+-", "/", "/")


def test_routes_are_normalised() -> None:
    route = checked(Route(["Shop.Example.COM", "shop.example.com", " www.shop.test "], 80))
    assert route.domains == ["shop.example.com", "www.shop.test"]
    assert checked(Route(["a.test"], 1, path="/api")).path == "/api/"
    assert checked(Route(["a.test"], 1, path="//api//v1/")).path == "/api/v1/"
    assert checked(Route(["a.test"], static_root="/srv/site/")).static_root == "/srv/site/"


def test_punycode_is_accepted_and_unicode_is_explained() -> None:
    assert check_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
    with pytest.raises(ProxyError, match="punycode"):
        check_domain("bücher.example")


@given(DOMAINS, PATHS, RELEASES, FS_PATHS)
def test_accepted_values_never_carry_nginx_syntax(
    domain: str, path: str, release: str, fs_path: str
) -> None:
    for check, value in ((check_domain, domain), (check_path, path), (check_release, release)):
        try:
            accepted = check(value)
        except ProxyError:
            continue
        assert not NGINX_SYNTAX.search(accepted)
    try:
        accepted = check_fs_path(fs_path, "path")
    except ProxyError:
        return
    assert not NGINX_SYNTAX.search(accepted)
    assert ".." not in accepted.split("/")


@given(
    st.lists(DOMAINS, min_size=1, max_size=3),
    PATHS,
    RELEASES,
)
def test_a_rendered_file_has_one_directive_per_line(
    domains: list[str], path: str, release: str
) -> None:
    settings = NginxSettings(conf_dir=Path("/etc/nginx/conf.d"))
    try:
        text = render(
            Site("shop", Route(domains, upstream_port=4000, path=path), release),
            settings,
            Path("/var/www/acme"),
        )
    except ProxyError:
        return
    body = [line.strip() for line in text.splitlines() if line.strip()]
    for line in body:
        if line.startswith("#"):
            continue
        assert line.count(";") <= 1
        assert line.endswith((";", "{", "}")), line
