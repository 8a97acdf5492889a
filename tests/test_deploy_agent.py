"""Deploys through the real agent process: signed `state.apply` and `git.resolve`
commands from a protocol peer, live progress `event` frames, signed results, and the
PM2 daemon started without the action's memory limit."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from serverflow_contract import protocol
from serverflow_testkit.deploy import deploy_settings, document, entry, get
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.pm2 import daemon_pid, pm2_home, processes, require_node_and_pm2
from serverflow_testkit.protocol_peer import ProtocolPeer, Rig, eventually, running_agent

DEPLOY_ACTIONS = ("state.apply", "git.resolve", "pm2.status", "pm2.logs", "pm2.restart")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    require_node_and_pm2()
    with pm2_home(tmp_path) as home:
        config = {"deploy": deploy_settings(tmp_path / "agent-state", home)}
        peer = ProtocolPeer(registry_actions=DEPLOY_ACTIONS)
        async with running_agent(tmp_path, None, peer, config) as rig:
            yield rig


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "shop-repo")


def pm2_of(rig: Rig) -> Path:
    return Path(rig.state_dir.parent / "pm2")


def progress(rig: Rig, command_id: str) -> list[dict[str, Any]]:
    """The progress events of one command, each verified against the agent's key."""
    found = []
    for _, frame in rig.peer.frames("event"):
        if frame.body["kind"] == "progress" and frame.body["data"]["command_id"] == command_id:
            protocol.verify(rig.agent_public_key, "event", frame.body, frame.sig)
            found.append(frame.body["data"])
    return found


def lines_of(events: list[dict[str, Any]], stage: str | None = None) -> list[str]:
    return [
        line
        for e in events
        if stage is None or e["stage"] == stage
        for line in e["line"].split("\n")
    ]


def address_space_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return line.split()[3]
    raise AssertionError("no address-space line")


async def apply(rig: Rig, doc: dict[str, Any], timeout: float = 180) -> tuple[str, dict]:
    frame = rig.peer.command("state.apply", doc)
    result = await rig.run(frame, timeout=timeout)
    assert result["status"] == "ok", result
    return frame.body["id"], result["output"]


async def test_git_resolve(rig: Rig, repo: GitRepo, tmp_path: Path) -> None:
    commit = repo.commit("node")
    ok = await rig.run(rig.peer.command("git.resolve", {"repo": repo.url, "branch": "main"}))
    assert ok["status"] == "ok", ok
    assert ok["output"] == {"branch": "main", "ref": "refs/heads/main", "commit": commit}

    nope = await rig.run(rig.peer.command("git.resolve", {"repo": repo.url, "branch": "nope"}))
    assert nope["status"] == "error"
    assert nope["message"].startswith(f"GitError: branch 'nope' does not exist in {repo.url}")

    missing = str(tmp_path / "missing")
    gone = await rig.run(rig.peer.command("git.resolve", {"repo": missing, "branch": "main"}))
    assert gone["status"] == "error"
    assert f"cannot read the repository {missing}" in gone["message"], gone

    for repo_url in ("ext::sh -c id", "-oProxyCommand=id"):
        refused = await rig.run(
            rig.peer.command("git.resolve", {"repo": repo_url, "branch": "main"})
        )
        assert refused["status"] == "error" and "refused repository URL" in refused["message"]


async def test_git_resolve_without_a_branch_answers_the_default_one(
    rig: Rig, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "master-repo", branch="master")
    first = repo.commit("node", message="on master")
    repo.create_branch("other")
    answer = await rig.run(rig.peer.command("git.resolve", {"repo": repo.url}))
    assert answer["status"] == "ok", answer
    assert answer["output"] == {"branch": "master", "ref": "refs/heads/master", "commit": first}

    empty = GitRepo(tmp_path / "empty-repo")
    nothing = await rig.run(rig.peer.command("git.resolve", {"repo": empty.url}))
    assert nothing["status"] == "error" and "has no commits yet" in nothing["message"]


async def test_state_apply_streams_progress_and_answers(rig: Rig, repo: GitRepo) -> None:
    c1 = repo.commit("node")
    command_id, output = await apply(rig, document(1, [entry("shop", repo.url, c1, "r1")]))
    shop = output["apps"]["shop"]
    assert output["changed"] is True and shop["status"] == "live", output
    assert get(shop["port"])[1].startswith("hello from v1")

    events = progress(rig, command_id)
    stages = {e["stage"] for e in events}
    assert {"sync", "checkout", "detect", "build", "start", "health", "done"} <= stages
    assert all(e["app"] == "shop" for e in events if e["stage"])
    assert "$ npm ci" in lines_of(events, "build")
    assert "health check passed" in lines_of(events, "health")
    # Every progress line went out before the result.
    session = await rig.peer.session()
    order = [f for f in session.frames if f.type in ("event", "result")]
    last_event = max(
        i
        for i, f in enumerate(order)
        if f.type == "event" and f.body["data"]["command_id"] == command_id
    )
    result_at = next(
        i for i, f in enumerate(order) if f.type == "result" and f.body["command_id"] == command_id
    )
    assert last_event < result_at

    # The PM2 daemon and the app run without the action's 512 MiB address-space limit.
    home = pm2_of(rig)
    app_pid = processes(home)["shop--r1"]["pid"]
    assert address_space_limit(daemon_pid(home)) == "unlimited"
    assert address_space_limit(app_pid) == "unlimited"

    # pm2.* actions read and restart what the deploy started.
    status = await rig.run(rig.peer.command("pm2.status", {"prefix": "shop--"}))
    (proc,) = status["output"]["processes"]
    assert proc["name"] == "shop--r1" and proc["status"] == "online" and proc["pid"] == app_pid
    logs = await rig.run(rig.peer.command("pm2.logs", {"prefix": "shop--", "lines": 10}))
    assert f"listening on {shop['port']}" in logs["output"]["logs"]["shop--r1"]
    restarted = await rig.run(rig.peer.command("pm2.restart", {"name": "shop--r1"}))
    assert restarted["status"] == "ok", restarted
    assert restarted["output"]["process"]["pid"] != app_pid

    # The same document again: changed false, nothing touched.
    again_id, again = await apply(rig, document(1, [entry("shop", repo.url, c1, "r1")]))
    assert again["changed"] is False and again["apps"]["shop"]["status"] == "unchanged"
    assert not lines_of(progress(rig, again_id), "build")

    # v2, then a rollback to r1: the rollback builds nothing.
    c2 = repo.commit(files={"version.txt": "v2\n"})
    _, second = await apply(rig, document(2, [entry("shop", repo.url, c2, "r2")]))
    assert get(second["apps"]["shop"]["port"])[1].startswith("hello from v2")
    back_id, back = await apply(rig, document(3, [entry("shop", repo.url, c1, "r1")]))
    assert get(back["apps"]["shop"]["port"])[1].startswith("hello from v1")
    back_events = progress(rig, back_id)
    assert back_events and not lines_of(back_events, "build") and not lines_of(back_events, "sync")


async def test_unknown_branch_commit_and_docker_fail_clearly(rig: Rig, repo: GitRepo) -> None:
    docker = repo.commit("docker")
    unknown = "f" * 40
    _, output = await apply(
        rig,
        document(
            1,
            [
                entry("ghost", repo.url, unknown, "r1"),
                entry("boxed", repo.url, docker, "r1"),
            ],
        ),
    )
    assert output["apps"]["ghost"]["status"] == "failed"
    assert output["apps"]["ghost"]["reason"] == f"commit {unknown} does not exist in {repo.url}"
    assert output["apps"]["boxed"]["status"] == "failed"
    assert "Docker runtime" in output["apps"]["boxed"]["reason"]


async def test_build_output_flood_is_coalesced(rig: Rig, repo: GitRepo) -> None:
    commit = repo.commit("node")
    flood = (
        "console.log('\\x1b[31m' + 'x'.repeat(10000));"
        "for (let i = 0; i < 50000; i++) console.log('build line ' + i)"
    )
    app = entry("shop", repo.url, commit, "r1", build=[["npm", "ci"], ["node", "-e", flood]])
    command_id, output = await apply(rig, document(1, [app]))
    assert output["apps"]["shop"]["status"] == "live", output
    events = progress(rig, command_id)
    build = lines_of(events, "build")
    assert "build line 49999" in build, (len(build), build[-3:])  # what matters is the end
    assert len(events) < 10_000  # lines were joined: far fewer frames than lines
    assert "x" * 2000 in build  # a very long line is cut at 2,000 characters, colours gone
    assert max(len(line) for line in build) == 2000
    assert all(len(e["line"]) <= 16_000 for e in events)
    # The agent was never blocked: heartbeats (every 300 ms) kept coming throughout.
    session = await rig.peer.session()
    times = _event_times(rig, command_id)
    beats = [
        f.body["sent_at"]
        for f in session.of_type("heartbeat")
        if min(times) - 1000 <= f.body["sent_at"] <= max(times) + 1000
    ]
    assert len(beats) >= 2
    assert max(b - a for a, b in itertools.pairwise(beats)) < 1500


def _event_times(rig: Rig, command_id: str) -> list[int]:
    return [
        f.body["sent_at"]
        for _, f in rig.peer.frames("event")
        if f.body["data"]["command_id"] == command_id
    ]


async def test_progress_is_dropped_while_offline_but_the_result_is_kept(
    rig: Rig, repo: GitRepo
) -> None:
    commit = repo.commit("node")
    slow = (
        "console.log('before the outage');"
        "setTimeout(() => console.log('during the outage'), 1500);"
        "setTimeout(() => {}, 3000)"
    )
    app = entry("shop", repo.url, commit, "r1", build=[["npm", "ci"], ["node", "-e", slow]])
    frame = rig.peer.command("state.apply", document(1, [app]))
    session = await rig.peer.session()
    await session.send(frame)
    command_id = frame.body["id"]
    await eventually(
        lambda: "before the outage" in lines_of(progress(rig, command_id)), 60, "the first line"
    )
    await rig.peer.stop()
    await asyncio.sleep(2.5)  # 'during the outage' is printed while nobody listens
    await rig.peer.start()
    result = await rig.peer.result(command_id, timeout=120)
    protocol.verify(rig.agent_public_key, "result", result.body, result.sig)
    assert result.body["status"] == "ok"
    assert result.body["output"]["apps"]["shop"]["status"] == "live"
    assert "during the outage" not in lines_of(progress(rig, command_id))
