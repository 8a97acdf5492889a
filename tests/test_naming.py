"""The API and the agent agree on every name and URL: one rule, checked on both sides."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
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
@example("git@[::1]:shop.git")
@example("HTTPS://git.example/shop.git")
@example("ssh://-oProxyCommand=id/shop.git")
@example("git@git.example:-shop.git")
def test_repository_urls(url: str) -> None:
    agree("repo", url)


# Every form git accepts (git-clone(1) "GIT URLS"), as the user would write it.
ACCEPTED_REPOS = [
    "https://git.example/shop.git",
    "https://git.example",  # git asks https://git.example/info/refs
    "https://deploy:s3cret@git.example:8443/team/shop.git",
    "https://[::1]:8443/r.git",
    "http://git.lan/shop",
    "ssh://git@git.example/srv/shop.git",
    "ssh://git@host:2222/~user/repo.git",
    "ssh://[2001:db8::1]:22/r.git",
    "git://git.example/repo",
    "git://git.example:9418/repo.git",
    "git@github.com:me/shop.git",
    "git@git.example:~user/repo.git",
    "deploy@git.internal:/srv/git/shop.git",
    "host:repo",
    "git@[::1]:repo.git",
    "[2001:db8::1]:repo.git",
    "file:///srv/repo.git",
    "file://localhost/srv/repo.git",
    "/srv/git/shop.git",  # a path on the server (the agent's): local paths are allowed
]

# What is refused, and the reason the message gives.
REFUSED_REPOS = {
    "--upload-pack=touch /tmp/x": "starts with '-'",
    "-uhttps://git.example/x": "starts with '-'",
    "ext::sh -c id": "remote helpers",
    "fd::17": "remote helpers",
    "ssh://-oProxyCommand=id/shop.git": "must not start with '-'",
    "ssh://-oProxyCommand=id@host/shop.git": "must not start with '-'",
    "git@git.example:-shop.git": "path must not start with '-'",
    "host:--upload-pack=id": "path must not start with '-'",
    "https://git.example/a b.git": "spaces or control characters",
    "https://git.example/\x7f": "spaces or control characters",
    "ftp://git.example/shop.git": "not supported",
    "git+ssh://git.example/shop.git": "deprecated spelling of ssh://",
    "https://": "names no host",
    "https:///shop.git": "names no host",
    "https://[::1/shop.git": "not a valid URL",
    "https://[git.example]/shop.git": "IPv6 address",
    "https://[127.0.0.1]/shop.git": "not a valid URL",  # RFC 3986: [ ] hold IPv6 only
    "https://git.example:https/shop.git": "not a valid URL",
    "https://git.example:70000/shop.git": "not a valid URL",
    "https://git.example:0/shop.git": "port 0",
    "https://a@b@git.example/shop.git": "%40",
    "ssh://git@git.example:22": "names no path",
    "git://git.example": "names no path",
    "file://fileserver/srv/repo.git": "on the server itself",
    "file://": "names no path",
    "git@[1::2::3]:repo.git": "not an IPv6 address",
    "git@[::zz]:repo.git": "use an https://",
    "git.example:": "use an https://",
    "relative/path.git": "use an https://",
    "./shop.git": "use an https://",
    "~/shop.git": "use an https://",
}


@pytest.mark.parametrize("url", ACCEPTED_REPOS)
def test_valid_git_urls_are_accepted_everywhere(url: str) -> None:
    assert naming.check_repo_url(url) == url
    ok, sent = api_accepts(repo=url)
    assert ok and sent["repo"] == url
    assert agent_accepts({"repo": url})


@pytest.mark.parametrize(("url", "reason"), REFUSED_REPOS.items())
def test_dangerous_or_broken_git_urls_are_refused_everywhere(url: str, reason: str) -> None:
    with pytest.raises(naming.InvalidName, match=re.escape(reason)):
        naming.check_repo_url(url)
    assert not api_accepts(repo=url)[0]
    assert not agent_accepts({"repo": url})


def test_a_scheme_is_lower_cased_for_git() -> None:
    """git looks for a `git-remote-HTTPS` for HTTPS://, which does not exist."""
    assert naming.check_repo_url(" HTTPS://Git.Example/Shop.git ") == "https://Git.Example/Shop.git"


def test_git_reads_the_accepted_forms_as_we_do(tmp_path: Path) -> None:
    """git itself: the ssh forms reach ssh with the host and path we read (no "strange
    hostname", no "no path specified"); the local forms list a real repository."""
    fake_ssh = tmp_path / "ssh"
    calls = tmp_path / "calls"
    fake_ssh.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    fake_ssh.chmod(0o755)
    env = {**os.environ, "GIT_SSH": str(fake_ssh), "GIT_SSH_VARIANT": "ssh"}
    env["GIT_TERMINAL_PROMPT"] = "0"
    ssh_forms = {
        "ssh://git@host:2222/~user/repo.git": "-p 2222 git@host git-upload-pack '~user/repo.git'",
        "ssh://[2001:db8::1]:22/r.git": "-p 22 2001:db8::1 git-upload-pack '/r.git'",
        "git@github.com:me/shop.git": "git@github.com git-upload-pack 'me/shop.git'",
        "host:repo": "host git-upload-pack 'repo'",
        "git@[::1]:repo.git": "git@::1 git-upload-pack 'repo.git'",
    }
    for url, argv in ssh_forms.items():
        calls.write_text("")
        subprocess.run(["git", "ls-remote", "--", naming.check_repo_url(url)], env=env,
                       capture_output=True, timeout=30)  # fmt: skip
        assert calls.read_text().strip().endswith(argv), (url, calls.read_text())

    bare = tmp_path / "srv.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    for url in (str(bare), f"file://{bare}", f"file://localhost{bare}"):
        listed = subprocess.run(
            ["git", "ls-remote", "--", naming.check_repo_url(url)],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listed.returncode == 0, (url, listed.stderr)


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
