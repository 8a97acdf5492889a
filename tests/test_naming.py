"""The API and the agent agree on every name and URL: one rule, checked on both sides."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serverflow.apps import AppIn
from serverflow_agent.deploy.desired import DeployError, parse_app
from serverflow_agent.proxy.errors import ProxyError
from serverflow_agent.proxy.routes import check_app
from serverflow_contract import naming
from serverflow_contract.desired import STATE_APPLY
from serverflow_contract.schema import SchemaError, validate

GOOD = {"name": "shop", "repo": "https://git.example/shop.git", "servers": ["web-1"]}
ENTRY = {"commit": "a" * 40, "release": "r1-aaaaaaa"}

ALPHABET = "abcz09AZ-_.:/@~ +é\\\x00\n"
PREFIXES = ["", "https://", "http://", "ssh://", "git://", "file://", "ext::", "git@", "-", "/"]


def noisy(max_size: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(PREFIXES),
        st.text(alphabet=ALPHABET, max_size=max_size),
    )


def api_accepts(**fields: Any) -> tuple[bool, dict[str, Any]]:
    """Whether POST /apps would take these fields, and what it would send on."""
    try:
        app = AppIn.model_validate({**GOOD, **fields})
    except ValidationError:
        return False, {}
    return True, app.model_dump()


def agent_accepts(entry: dict[str, Any]) -> bool:
    """Whether the agent's state.apply takes this app entry (schema, then its checks)."""
    app = {"name": GOOD["name"], "repo": GOOD["repo"], **ENTRY, **entry}
    try:
        validate({"version": 1, "hash": "0" * 64, "apps": [app]}, STATE_APPLY)
        parse_app(app)
    except (SchemaError, DeployError):
        return False
    return True


def agree(field: str, value: Any, entry_field: str | None = None) -> None:
    ok, sent = api_accepts(**{field: value})
    key = entry_field or field
    if ok:
        assert agent_accepts({key: sent[field]}), f"API took {field}={value!r}, agent refused"
    else:
        assert not agent_accepts({key: value}), f"API refused {field}={value!r}, agent took it"


@settings(max_examples=400, deadline=None)
@given(st.one_of(noisy(70), st.from_regex(naming.APP_NAME, fullmatch=True)))
@example("a--b")
@example("a_b")
@example("Shop")
@example("00-serverflow")
@example("a" * 63)
@example("a" * 64)
def test_app_names(name: str) -> None:
    agree("name", name)
    try:
        check_app(name)
        proxy_ok = True
    except ProxyError:
        proxy_ok = False
    assert proxy_ok == api_accepts(name=name)[0]


@settings(max_examples=400, deadline=None)
@given(noisy(60))
@example("https://user:secret@git.example/shop.git")
@example("ext::sh -c id")
@example("--upload-pack=touch /tmp/x")
@example("git@github.com:me/shop.git")
@example("https://git.example/" + "a" * 990)
@example("ftp://git.example/shop.git")
def test_repository_urls(url: str) -> None:
    agree("repo", url)


@settings(max_examples=300, deadline=None)
@given(st.lists(noisy(30), min_size=1, max_size=3))
@example(["Shop.Example.com"])
@example(["shop.example.com."])
@example(["*.example.com"])
@example(["localhost"])
@example(["10.0.0.1"])
def test_domains(domains: list[str]) -> None:
    agree("domains", domains)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(noisy(20), st.text(max_size=20), max_size=3))
@example({"1BAD": "x"})
@example({"GOOD_NAME": "nul\x00"})
@example({"A" * 128: "x"})
@example({"A" * 129: "x"})
def test_env(env: dict[str, str]) -> None:
    agree("env", env)


@settings(max_examples=300, deadline=None)
@given(noisy(30))
@example("/healthz")
@example("/health check")
@example("/é")
def test_health_paths(path: str) -> None:
    ok, sent = api_accepts(health_path=path)
    entry = {"health": {"path": sent["health_path"] if ok else path, "timeout_s": 5}}
    assert agent_accepts(entry) == ok, path


@settings(max_examples=300, deadline=None)
@given(noisy(30))
@example("main")
@example("release/1.2")
@example("a..b")
@example("feature@{1}")
@example("x.lock")
@example("é")
def test_branches_one_rule(branch: str) -> None:
    """REST deploys, MCP deploys and the agent's git.resolve take the same branch names."""
    from serverflow.api.apps import DeployIn
    from serverflow.operations.deploys import DeployArgs
    from serverflow_agent.deploy.desired import check_branch

    verdicts = []
    for model, fields in ((DeployIn, {}), (DeployArgs, {"app": "shop"})):
        try:
            model.model_validate({**fields, "branch": branch})
            verdicts.append(True)
        except ValidationError:
            verdicts.append(False)
    try:
        check_branch(branch)
        verdicts.append(True)
    except DeployError:
        verdicts.append(False)
    assert len(set(verdicts)) == 1, (branch, verdicts)
