"""The MCP endpoint, driven by the SDK's own client over streamable HTTP against a real
`serverflow up` and a real `serverflow-agent` process (with the test action plugin).

The observable side effect is the test plugin's `test.touch` (kind change): it creates a
marker file on the "server". A dry run must not create it, an apply must, and a refused
or replayed apply must leave it absent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from serverflow_testkit import wait_for
from serverflow_testkit.controlplane import Deployment, bootstrap, run_cli
from serverflow_testkit.protocol_peer import (
    AgentProcess,
    agent_env,
    install_agent_plugin,
    register_agent,
)
from tests.conftest import AGENT_TEST_PLUGIN

INTERVAL_MS = 500


def new_token(dep: Deployment, org: str, name: str, role: str, allow_apply: bool = False) -> str:
    args = ["tokens", "create", "--org", org, "--name", name, "--role", role, "--json"]
    out = run_cli(*args, *(["--allow-apply"] if allow_apply else []), env=dep.cp.env).stdout
    return str(json.loads(out)["token"])


class RealAgent:
    """`serverflow-agent register` + `run` from this venv, as the install script does."""

    def __init__(
        self,
        dep: Deployment,
        work: Path,
        name: str,
        site: Path | None,
        deploy: dict[str, Any] | None = None,
    ) -> None:
        self.dep = dep
        with dep.http() as http:
            made = http.post("/servers", json={"name": name})
        assert made.status_code == 201, made.text
        self.server: dict[str, Any] = made.json()
        self.id = str(self.server["id"])
        self.state = work / f"{name}-state"
        self.markers = work / f"{name}-markers"
        self.markers.mkdir(parents=True)
        env = agent_env(site, self.markers)
        register_agent(dep.url, self.server["install"]["token"], self.state, env, deploy)
        self.process = AgentProcess(self.state, env, work / f"{name}-agent.log").start()
        wait_for(lambda: self.status() == "online", 60, f"{name} online\n{self.log()}")

    def status(self) -> str:
        with self.dep.http() as http:
            return str(http.get(f"/servers/{self.id}").json()["status"])

    def log(self) -> str:
        return self.process.log()

    def commands(self, action: str) -> list[dict[str, Any]]:
        with self.dep.http() as http:
            rows = http.get(f"/servers/{self.id}/commands").json()["commands"]
        return [c for c in rows if c["action"] == action]

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Rig:
    dep: Deployment
    agent: RealAgent
    tokens: dict[str, str]  # owner admin member viewer, applier, admin_applier, other


def assistants(dep: Deployment) -> dict[str, str]:
    """The bootstrap tokens plus tokens that may apply plans, and one of another org."""
    tokens = dict(dep.tokens)
    tokens["applier"] = new_token(dep, "acme", "assistant", "member", allow_apply=True)
    tokens["admin_applier"] = new_token(dep, "acme", "assistant-admin", "admin", allow_apply=True)
    other = ("owner@other.test", "--new-org", "Other", "--role", "owner")
    run_cli("users", "create", *other, env=dep.cp.env)
    tokens["other"] = new_token(dep, "other", "other-owner", "owner")
    return tokens


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_agent_plugin(AGENT_TEST_PLUGIN, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, site: Path) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("mcp")
    dep = bootstrap(work / "data", env={"SERVERFLOW_HEARTBEAT_INTERVAL_MS": str(INTERVAL_MS)})
    try:
        tokens = assistants(dep)
        agent = RealAgent(dep, work, "web-1", site)
        with dep.http() as api:
            shop = {"name": "shop", "repo": "https://git.example/shop.git", "servers": ["web-1"]}
            assert api.post("/apps", json=shop).status_code == 201
        try:
            yield Rig(dep, agent, tokens)
        finally:
            agent.stop()
    finally:
        dep.cp.stop()


@asynccontextmanager
async def mcp_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    """The SDK's client session over streamable HTTP, with the token as a bearer header."""
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(30, read=300)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(url + "/mcp", http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                yield session


async def call(
    dep: Deployment, token: str, tool: str, args: dict[str, Any] | None = None
) -> CallToolResult:
    async with mcp_session(dep.url, token) as session:
        result = await session.call_tool(tool, args or {})
    assert isinstance(result, CallToolResult)
    return result


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def refused(result: CallToolResult, code: str) -> dict[str, Any]:
    assert result.is_error, result.structured_content
    error = result.structured_content["error"]  # type: ignore[index]
    assert error["code"] == code, error
    text = result.content[0].text  # type: ignore[union-attr]
    assert text.startswith(f"{code}: "), text  # readable by a model without the structure
    return dict(error)


def audit_rows(dep: Deployment, org: str = "acme") -> list[dict[str, Any]]:
    out = run_cli("audit", "export", "--org", org, env=dep.cp.env).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- authentication ------------------------------------------------------------------


def test_mcp_without_a_valid_token_is_refused_before_any_mcp_handling(rig: Rig) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    url = rig.dep.url + "/mcp"
    with rig.dep.http("owner") as api:
        made = api.post("/tokens", json={"name": "soon-revoked", "role": "member"}).json()
        assert api.delete(f"/tokens/{made['id']}").status_code == 200
    cases = [
        ({}, "AUTH001"),
        ({"Authorization": "Bearer nonsense"}, "AUTH002"),
        ({"Authorization": "Bearer sf_" + "0" * 32 + "_" + "A" * 43}, "AUTH002"),
        ({"Authorization": f"Basic {rig.tokens['owner']}"}, "AUTH002"),
        ({"Authorization": f"Bearer {made['token']}"}, "AUTH002"),
    ]
    for headers, code in cases:
        answer = httpx.post(url, json=initialize, headers={**accept, **headers}, timeout=30)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == code
        assert answer.headers["content-type"] == "application/json"
    good = {"Authorization": f"Bearer {rig.tokens['viewer']}"}
    answer = httpx.post(url, json=initialize, headers={**accept, **good}, timeout=30)
    assert answer.status_code == 200, answer.text


# -- reads -----------------------------------------------------------------------------


async def test_list_servers_and_read_actions(rig: Rig) -> None:
    dep, member = rig.dep, rig.tokens["member"]

    async def metrics() -> dict[str, Any] | None:
        servers = ok(await call(dep, member, "list_servers"))["servers"]
        web = next(s for s in servers if s["name"] == "web-1")
        assert web["status"] == "online" and web["connected"] is True, web
        assert web["last_seen_at"] and web["agent_version"]
        return web["metrics"]

    deadline = time.monotonic() + 30
    while not await metrics():
        assert time.monotonic() < deadline, "no metrics reported"
        await asyncio.sleep(0.2)
    found = await metrics()
    assert found is not None and "cpu_percent" in found

    server = ok(await call(dep, member, "get_server", {"server": "web-1"}))
    assert "test.touch" in server["actions"]["change"]
    assert "system.info" in server["actions"]["read"]
    listed = ok(await call(dep, member, "list_actions", {"server": rig.agent.id}))
    touch = next(a for a in listed["actions"] if a["name"] == "test.touch")
    assert touch["kind"] == "change" and touch["params_schema"]["required"] == ["path"]

    for who in ("member", "viewer"):  # a read action runs at once, also for a viewer
        args = {"server": "web-1", "action": "system.info"}
        info = ok(await call(dep, rig.tokens[who], "run_action", args))
        assert info["status"] == "ok" and info["output"]["hostname"], info
        assert "dry_run" not in info

    async with mcp_session(dep.url, member) as session:
        resources = {str(r.uri) for r in (await session.list_resources()).resources}
        assert {"serverflow://servers", "serverflow://apps"} <= resources
        read = await session.read_resource("serverflow://servers")
        body = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        assert [s["name"] for s in body["servers"]] == ["web-1"]


# -- the assistant flow: dry run, refused apply, apply, replay, destructive, audit -------


async def test_dry_run_apply_replay_confirm_and_their_audit_trail(rig: Rig) -> None:
    dep, agent, tokens = rig.dep, rig.agent, rig.tokens
    marker = agent.markers / "flow"
    start = audit_rows(dep)[-1]["seq"]
    touches = len(agent.commands("test.touch"))

    # 1. A change is only a dry run: a plan id, what would be signed, nothing run.
    planned = ok(
        await call(
            dep,
            tokens["member"],
            "run_action",
            {"server": "web-1", "action": "test.touch", "params": {"path": "flow"}},
        )
    )
    assert planned["dry_run"] is True and planned["kind"] == "change"
    plan_id = planned["plan_id"]
    command = planned["preview"]["commands"][0]
    assert command == {
        "server": "web-1",
        "action": "test.touch",
        "kind": "change",
        "params": {"path": "flow"},
    }
    assert "apply" in planned["next_step"] and "serverflow plans confirm" in planned["next_step"]
    assert not marker.exists()
    assert len(agent.commands("test.touch")) == touches  # nothing was signed or sent

    # 2. A token without allow_apply cannot apply it.
    refused(await call(dep, tokens["member"], "apply_plan", {"plan_id": plan_id}), "PLAN004")
    assert not marker.exists()

    # 3. A token with allow_apply applies it: the command runs, signed, once.
    applied = ok(await call(dep, tokens["applier"], "apply_plan", {"plan_id": plan_id}))
    assert applied["applied"] is True and applied["plan"]["status"] == "applied"
    ran = applied["result"]["command"]
    assert ran["status"] == "ok" and ran["output"]["created"] == str(marker.resolve())
    assert marker.exists()
    sent = agent.commands("test.touch")
    assert len(sent) == touches + 1 and sent[0]["issued_by"] == "token:assistant"

    # 4. Replaying the apply runs nothing.
    marker.unlink()
    refused(await call(dep, tokens["applier"], "apply_plan", {"plan_id": plan_id}), "PLAN003")
    assert not marker.exists() and len(agent.commands("test.touch")) == touches + 1

    # 5. A destructive plan waits for a person, whatever the token may apply.
    with dep.http() as api:
        old = api.post("/servers", json={"name": "old-1"}).json()
    doomed = ok(await call(dep, tokens["admin_applier"], "delete_server", {"server": "old-1"}))
    assert doomed["kind"] == "destructive" and "cannot apply" in doomed["next_step"]
    refused(
        await call(dep, tokens["admin_applier"], "apply_plan", {"plan_id": doomed["plan_id"]}),
        "PLAN005",
    )
    polled = ok(
        await call(dep, tokens["admin_applier"], "get_plan", {"plan_id": doomed["plan_id"]})
    )
    assert polled["status"] == "pending"
    with dep.http() as api:
        assert api.get(f"/servers/{old['id']}").status_code == 200  # still there

    # 6. A person confirms it with the CLI: it runs at once. Without --yes the CLI shows
    # the plan and asks first; answering no runs nothing.
    human = dict(dep.cp.env, SERVERFLOW_URL=dep.url, SERVERFLOW_TOKEN=tokens["owner"])
    declined = run_cli("plans", "confirm", doomed["plan_id"], env=human, input="n\n", check=False)
    assert declined.returncode == 1 and "Delete server old-1" in declined.stdout
    with dep.http() as api:
        assert api.get(f"/servers/{old['id']}").status_code == 200
    shown = dep.cli("plans", "show", doomed["plan_id"], role="owner").stdout
    assert "Delete server old-1" in shown and "destructive" in shown
    confirmed = dep.cli("plans", "confirm", doomed["plan_id"], "--yes", role="owner")
    assert "applied" in confirmed.stdout
    with dep.http() as api:
        assert api.get(f"/servers/{old['id']}").json()["error"]["code"] == "SRV001"
    polled = ok(
        await call(dep, tokens["admin_applier"], "get_plan", {"plan_id": doomed["plan_id"]})
    )
    assert polled["status"] == "applied" and polled["decided_by"] == "token:owner"

    # 7. A viewer's change is refused.
    refused(await call(dep, tokens["viewer"], "deploy_app", {"app": "anything"}), "AUTH004")

    # Every step is in the audit log, in order, with its outcome.
    steps = [
        (r["actor"], r["action"], r["outcome"])
        for r in audit_rows(dep)
        if r["seq"] > start and r["action"] != "api.create_server"
    ]
    assert steps == [
        ("token:member", "mcp.run_action", "planned"),
        ("token:member", "mcp.apply_plan", "PLAN004"),
        ("token:assistant", "agent.command", "ok"),
        ("token:assistant", "mcp.apply_plan", "ok"),
        ("token:assistant", "mcp.apply_plan", "PLAN003"),
        ("token:assistant-admin", "mcp.delete_server", "planned"),
        ("token:assistant-admin", "mcp.apply_plan", "PLAN005"),
        ("token:assistant-admin", "mcp.get_plan", "ok"),
        ("token:owner", "api.confirm_plan", "ok"),
        ("token:assistant-admin", "mcp.get_plan", "ok"),
        ("token:viewer", "mcp.deploy_app", "AUTH004"),
    ]
    rows = {r["seq"]: r for r in audit_rows(dep)}
    first = next(r for r in rows.values() if r["seq"] > start and r["action"] == "mcp.run_action")
    assert first["details"]["plan_id"] == plan_id
    assert first["details"]["arguments"]["params"] == {"path": "flow"}
    assert first["target"] == "server:web-1 action:test.touch"
    verified = run_cli("audit", "verify", "--org", "acme", env=dep.cp.env)
    assert verified.stdout.startswith("ok")


async def test_secrets_never_leave_in_previews_results_or_the_audit(rig: Rig) -> None:
    dep, member = rig.dep, rig.tokens["member"]
    secret = f"hunter2-{uuid.uuid4().hex}"
    planned = ok(
        await call(
            dep,
            member,
            "create_app",
            {
                "name": "vault",
                "repo": "https://git.example/vault.git",
                "servers": ["web-1"],
                "env": {"DB_PASSWORD": secret, "MODE": "prod"},
            },
        )
    )
    assert planned["preview"]["app"]["env"] == {"DB_PASSWORD": "********", "MODE": "********"}
    applied = ok(
        await call(dep, rig.tokens["applier"], "apply_plan", {"plan_id": planned["plan_id"]})
    )
    assert applied["result"]["app"]["name"] == "vault"
    shown = ok(await call(dep, member, "get_app", {"app": "vault"}))
    assert shown["settings"]["env"] == {"DB_PASSWORD": "********", "MODE": "********"}
    everything = json.dumps([planned, applied, shown, audit_rows(dep)])
    assert secret not in everything
    assert secret not in dep.cli("plans", "show", planned["plan_id"], "--json").stdout
    assert secret not in dep.cp.log()
    with dep.http() as api:  # ...but the app really has it (set, encrypted, masked)
        assert api.get("/apps/vault").json()["env"] == {
            "DB_PASSWORD": "********",
            "MODE": "********",
        }


# -- tenancy and roles ------------------------------------------------------------------


async def test_a_token_of_another_organisation_sees_nothing(rig: Rig) -> None:
    dep, other = rig.dep, rig.tokens["other"]
    acme_plan = ok(
        await call(dep, rig.tokens["member"], "update_app", {"app": "shop", "branch": "other"})
    )
    assert ok(await call(dep, other, "list_servers")) == {"servers": []}
    assert ok(await call(dep, other, "list_apps")) == {"apps": []}
    for ref in ("web-1", rig.agent.id):
        refused(await call(dep, other, "get_server", {"server": ref}), "SRV001")
        refused(await call(dep, other, "list_actions", {"server": ref}), "SRV001")
        refused(
            await call(dep, other, "run_action", {"server": ref, "action": "system.info"}),
            "SRV001",
        )
        refused(await call(dep, other, "delete_server", {"server": ref}), "SRV001")
    refused(await call(dep, other, "get_app", {"app": "shop"}), "APP001")
    refused(await call(dep, other, "deploy_app", {"app": "shop"}), "APP001")
    for tool in ("get_plan", "apply_plan"):
        refused(await call(dep, other, tool, {"plan_id": acme_plan["plan_id"]}), "PLAN001")
    assert ok(await call(dep, other, "list_plans")) == {"plans": []}
    async with mcp_session(dep.url, other) as session:
        read = await session.read_resource("serverflow://servers")
        assert json.loads(read.contents[0].text) == {"servers": []}  # type: ignore[union-attr]
    # The acme plan is untouched, and the other organisation's calls are in its own log.
    with dep.http() as api:
        assert api.get(f"/plans/{acme_plan['plan_id']}").json()["status"] == "pending"
    theirs = [r for r in audit_rows(dep, "other") if r["action"].startswith("mcp.")]
    assert {r["outcome"] for r in theirs} >= {"ok", "SRV001", "APP001", "PLAN001"}
    assert not any(r["actor"] == "token:other-owner" for r in audit_rows(dep))


async def test_a_viewer_can_read_but_every_change_is_refused(rig: Rig) -> None:
    dep, viewer = rig.dep, rig.tokens["viewer"]
    with dep.http() as api:
        plans_before = len(api.get("/plans").json()["plans"])
    touches = len(rig.agent.commands("test.touch"))
    for tool in ("list_servers", "list_apps", "list_plans"):
        ok(await call(dep, viewer, tool))
    ok(await call(dep, viewer, "get_server", {"server": "web-1"}))
    ok(await call(dep, viewer, "get_app", {"app": "shop"}))
    changes: list[tuple[str, dict[str, Any]]] = [
        ("create_app", {"name": "nope", "repo": "https://git.example/x.git", "servers": ["web-1"]}),
        ("update_app", {"app": "shop", "branch": "dev"}),
        ("deploy_app", {"app": "shop"}),
        ("rollback_app", {"app": "shop"}),
        ("restart_app", {"app": "shop"}),
        ("run_action", {"server": "web-1", "action": "test.touch", "params": {"path": "v"}}),
        ("delete_app", {"app": "shop"}),
        ("delete_server", {"server": "web-1"}),
    ]
    for tool, args in changes:
        refused(await call(dep, viewer, tool, args), "AUTH004")
    pending = ok(
        await call(dep, rig.tokens["member"], "update_app", {"app": "shop", "branch": "dev"})
    )
    refused(await call(dep, viewer, "apply_plan", {"plan_id": pending["plan_id"]}), "AUTH004")
    assert not (rig.agent.markers / "v").exists()
    assert len(rig.agent.commands("test.touch")) == touches
    with dep.http() as api:
        after = api.get("/plans").json()["plans"]
        assert len(after) == plans_before + 1  # only the member's plan
        assert api.get(f"/plans/{pending['plan_id']}").json()["status"] == "pending"
        assert api.get("/apps/vault").json()["branch"] is None  # still the default
    viewer_rows = [r for r in audit_rows(dep) if r["actor"] == "token:viewer"]
    assert sum(r["outcome"] == "AUTH004" for r in viewer_rows) >= len(changes) + 1


# -- bad input ---------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_tool_error_and_changes_nothing(rig: Rig) -> None:
    dep, applier = rig.dep, rig.tokens["applier"]
    with dep.http() as api:
        plans_before = len(api.get("/plans").json()["plans"])
        apps_before = api.get("/apps").json()["apps"]
    touches = len(rig.agent.commands("test.touch"))
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("get_server", {"server": "no-such"}, "SRV001", "no server 'no-such'"),
        ("deploy_app", {"app": "no-such"}, "APP001", "no app 'no-such'"),
        ("run_action", {"server": "no-such", "action": "test.touch"}, "SRV001", "no server"),
        ("run_action", {"server": "web-1", "action": "rm.rf"}, "ACT001", "has no action"),
        (
            "run_action",
            {"server": "web-1", "action": "test.touch", "params": {"path": 5}},
            "ACT003",
            "path",
        ),
        (
            "run_action",
            {"server": "web-1", "action": "test.touch", "params": {"path": "x", "mode": "rw"}},
            "ACT003",
            "mode",
        ),
        ("run_action", {"server": "web-1", "action": "test.touch"}, "ACT003", "path"),
        ("deploy_app", {"app": "shop", "commit": "main"}, "VAL001", "commit"),
        ("get_server", {"server": 42}, "VAL001", "server"),
        ("get_server", {}, "VAL001", "server"),
        (
            "create_app",
            {"name": "x", "repo": "ext::sh -c id", "servers": ["web-1"]},
            "VAL001",
            "repo",
        ),
        (
            "create_app",
            {"name": "x", "repo": "https://g.example/x.git", "servers": ["nowhere"]},
            "SRV001",
            "nowhere",
        ),
        ("apply_plan", {"plan_id": "not-a-plan"}, "PLAN001", "not found"),
        ("apply_plan", {"plan_id": str(uuid.uuid4())}, "PLAN001", "not found"),
        ("get_plan", {"plan_id": "../../etc"}, "PLAN001", "not found"),
        ("get_app_logs", {"app": "shop", "lines": 100000}, "VAL001", "lines"),
        ("get_app_logs", {"app": "shop"}, "DEP001", "has not been deployed yet"),
        ("no_such_tool", {}, "MCP001", "no tool"),
    ]
    for tool, args, code, words in cases:
        error = refused(await call(dep, applier, tool, args), code)
        assert words in error["message"], (tool, error)
    # Validation errors name the field, never the value (it may be a secret).
    error = refused(
        await call(
            dep,
            applier,
            "create_app",
            {"name": "x", "repo": 7, "servers": ["web-1"], "env": {"TOKEN": "sekrit-value"}},
        ),
        "VAL001",
    )
    assert "sekrit-value" not in json.dumps(error) and error["details"][0]["field"] == "repo"
    assert not (rig.agent.markers / "x").exists()
    assert len(rig.agent.commands("test.touch")) == touches
    with dep.http() as api:
        assert len(api.get("/plans").json()["plans"]) == plans_before
        assert api.get("/apps").json()["apps"] == apps_before


async def test_an_expired_plan_is_refused(tmp_path: Path) -> None:
    dep = bootstrap(tmp_path / "data", env={"SERVERFLOW_PLAN_EXPIRY_SECONDS": "1"})
    try:
        applier = new_token(dep, "acme", "assistant", "member", allow_apply=True)
        with dep.http() as api:
            assert api.post("/servers", json={"name": "web-1"}).status_code == 201
        args = {"name": "late", "repo": "https://git.example/late.git", "servers": ["web-1"]}
        planned = ok(await call(dep, applier, "create_app", args))
        await asyncio.sleep(1.5)
        error = refused(
            await call(dep, applier, "apply_plan", {"plan_id": planned["plan_id"]}), "PLAN002"
        )
        assert "expired" in error["message"]
        assert (
            ok(await call(dep, applier, "get_plan", {"plan_id": planned["plan_id"]}))["status"]
            == "expired"
        )
        late = dep.cli("plans", "confirm", planned["plan_id"], "--yes", check=False)
        assert late.returncode == 1 and "[PLAN002]" in late.stderr
        with dep.http() as api:
            assert api.get("/apps").json()["apps"] == []
        outcomes = [(r["action"], r["outcome"]) for r in audit_rows(dep)]
        assert ("mcp.apply_plan", "PLAN002") in outcomes
        assert ("api.confirm_plan", "PLAN002") in outcomes
    finally:
        dep.cp.stop()


async def test_the_rate_limit_is_per_token_and_clear(tmp_path: Path) -> None:
    dep = bootstrap(tmp_path / "data", env={"SERVERFLOW_MCP_RATE_PER_MINUTE": "3"})
    try:
        for _ in range(3):
            ok(await call(dep, dep.tokens["member"], "list_servers"))
        error = refused(await call(dep, dep.tokens["member"], "list_servers"), "RATE001")
        assert "3 per minute" in error["message"] and "retry in" in error["message"]
        assert error["details"]["retry_after"] >= 1
        ok(await call(dep, dep.tokens["viewer"], "list_servers"))  # its own budget
        outcomes = [(r["actor"], r["outcome"]) for r in audit_rows(dep)]
        assert outcomes[-2:] == [("token:member", "RATE001"), ("token:viewer", "ok")]
    finally:
        dep.cp.stop()
