"""`app.logs`: an app's own output, read by the real agent from real PM2 processes (web
and Procfile workers), merged in time order, resumed by cursor, followed as progress
events, and read from the end of a log of gigabytes within the action's memory limit.
The reading of log files (serverflow_agent.logfiles) is tested on files of its own."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from serverflow_agent import logfiles
from serverflow_agent.app_logs import decode_cursor, encode_cursor
from serverflow_contract import naming, protocol
from serverflow_contract.runtime import LogFile
from serverflow_runtime_pm2.pm2 import Pm2Runtime
from serverflow_testkit.deploy import deploy_settings, document, entry, get
from serverflow_testkit.gitrepo import GitRepo
from serverflow_testkit.pm2 import pm2_home, require_node_and_pm2
from serverflow_testkit.protocol_peer import ProtocolPeer, Rig, eventually, running_agent

ACTIONS = ("state.apply", "git.resolve", "pm2.status", "pm2.logs", "app.logs")
GIB = 1024**3

SERVER_JS = """
const http = require("http");
http
  .createServer((req, res) => {
    if (req.url.startsWith("/err")) console.error("oops " + req.url);
    else if (req.url !== "/healthz") console.log("GET " + req.url);
    res.end("ok\\n");
  })
  .listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
"""
WORKER_JS = """
console.log("worker " + process.env.SERVERFLOW_PROCESS + " up");
let n = 0;
setInterval(() => console.log("tick " + ++n), 400);
"""
LOGGING_APP = {
    "server.js": SERVER_JS,
    "worker.js": WORKER_JS,
    "Procfile": "web: node server.js\nworker: node worker.js\n",
}


# -- naming and reading log files -----------------------------------------------------


def test_process_names_parse_back() -> None:
    for release, kind, index in (("r3-abc1234", "web", 1), ("r3-abc1234", "worker", 2)):
        name = naming.process_name("shop", release, kind, index)
        assert naming.parse_process_name("shop", name) == (release, kind, index)
    assert naming.process_name("shop", "r3-abc1234") == "shop--r3-abc1234"
    assert naming.parse_process_name("shop", "shop--r3-abc1234--clock-1") == (
        "r3-abc1234",
        "clock",
        1,
    )
    for other in (
        "shop-api--r3-abc1234",
        "shop--",
        "shop---r1",
        "shopx",
    ):
        assert naming.parse_process_name("shop", other) is None, other


def record(message: str, stream: str = "out", at: str = "2026-01-02T03:04:05.000Z") -> str:
    return json.dumps({"message": message, "type": stream, "timestamp": at}) + "\n"


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def texts(lines: list[logfiles.Line]) -> list[str]:
    return [line.text for line in lines]


def test_a_cursor_gives_only_newer_lines(tmp_path: Path) -> None:
    path = tmp_path / "web.jsonl"
    file = LogFile(path, format="json")
    append(path, "".join(record(f"old {i}\n") for i in range(5)))
    lines, position = logfiles.tail(file, 3)
    assert texts(lines) == ["old 2", "old 3", "old 4"]
    assert lines[0].at == 1767323045000 and lines[0].stream == "out"

    append(path, record("new 1\nnew 2\n") + record("oops\n", "err"))
    newer, position = logfiles.since(file, position, 100)
    assert [(line.stream, line.text) for line in newer] == [
        ("out", "new 1"),
        ("out", "new 2"),
        ("err", "oops"),
    ]
    assert logfiles.since(file, position, 100)[0] == []  # nothing new: nothing again

    # A line written in two chunks is one line; one shown before its end is finished
    # on a line of its own, and the newline that ends it adds no empty line.
    append(path, record("half ") + record("and half\nopen "))
    joined, position = logfiles.since(file, position, 100)
    assert texts(joined) == ["half and half", "open "]
    append(path, record("end\n") + record("\n") + record("next\n"))
    rest, position = logfiles.since(file, position, 100)
    assert texts(rest) == ["end", "", "next"]

    # A cursor survives the round trip through the control plane (opaque text).
    cursor = encode_cursor({"web#0": position})
    assert decode_cursor(cursor) == {"web#0": position}

    # Truncated (or rotated) files are read again from their start.
    path.write_text(record("after rotation\n"))
    again, _ = logfiles.since(file, position, 100)
    assert texts(again) == ["after rotation"]


def test_reading_is_bounded_and_starts_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("first line\n")
    file = LogFile(path)  # plain text
    _, position = logfiles.tail(file, 10)
    os.truncate(path, 8 * GIB)  # a hole of 8 GiB: no disk used, but reading it would take long
    append(path, "\n" + "".join(f"late {i}\n" for i in range(3)))
    lines, _ = logfiles.tail(file, 2)
    assert texts(lines) == ["late 1", "late 2"]
    newer, position = logfiles.since(file, position, 100)
    assert texts(newer)[-3:] == ["late 0", "late 1", "late 2"]
    assert position is not None and position.offset == path.stat().st_size
    # A line still being written is left for later.
    append(path, "no newline yet")
    assert logfiles.since(file, position, 100)[0] == []
    append(path, ", now\n")
    assert texts(logfiles.since(file, position, 100)[0]) == ["no newline yet, now"]


# -- the action, through the real agent -----------------------------------------------


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    require_node_and_pm2()
    with pm2_home(tmp_path) as home:
        config = {"deploy": deploy_settings(tmp_path / "agent-state", home)}
        peer = ProtocolPeer(registry_actions=ACTIONS)
        async with running_agent(tmp_path, None, peer, config) as rig:
            yield rig


def progress_lines(rig: Rig, command_id: str) -> list[dict[str, Any]]:
    """The log entries a command sent as progress events (each verified)."""
    found = []
    for _, frame in rig.peer.frames("event"):
        data = frame.body["data"]
        if frame.body["kind"] == "progress" and data["command_id"] == command_id:
            protocol.verify(rig.agent_public_key, "event", frame.body, frame.sig)
            assert data["app"] == "shop" and data["stage"] == "log"
            found += [json.loads(line) for line in data["line"].split("\n")]
    return found


async def logs(rig: Rig, **params: Any) -> dict[str, Any]:
    result = await rig.run(rig.peer.command("app.logs", {"app": "shop", **params}), 60)
    assert result["status"] == "ok", result
    return dict(result["output"])


def shown(output: dict[str, Any]) -> list[str]:
    return [e["line"] for e in output["lines"]]


async def logs_until(
    rig: Rig, check: Callable[[dict[str, Any]], bool], what: str, **params: Any
) -> dict[str, Any]:
    """Ask for the logs again until `check` holds for the answer (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        output = await logs(rig, **params)
        if check(output):
            return output
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {shown(output)[-20:]}")
        await asyncio.sleep(0.2)


async def test_app_logs_of_web_and_workers(rig: Rig, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "shop-repo")
    commit = repo.commit("node", LOGGING_APP)
    app = entry("shop", repo.url, commit, "r1-abc1234", formation={"worker": 2})
    applied = await rig.run(rig.peer.command("state.apply", document(1, [app])), 180)
    assert applied["status"] == "ok", applied
    port = applied["output"]["apps"]["shop"]["port"]
    assert applied["output"]["apps"]["shop"]["status"] == "live", applied

    # Every process of the app, named as naming.process_name names them.
    def ticks_of_both(output: dict[str, Any]) -> bool:
        workers = {e["index"] for e in output["lines"] if e["line"].startswith("tick")}
        return workers == {1, 2}

    first = await logs_until(rig, ticks_of_both, "ticks of both workers")
    assert sorted(first["processes"]) == [
        "shop--r1-abc1234",
        "shop--r1-abc1234--worker-1",
        "shop--r1-abc1234--worker-2",
    ]
    web = {"type": "web", "index": 1, "release": "r1-abc1234", "stream": "out"}
    assert {**web, "line": f"listening on {port}"}.items() <= next(
        e for e in first["lines"] if e["type"] == "web"
    ).items()
    assert {(e["type"], e["index"], e["line"]) for e in first["lines"]} >= {
        ("worker", 1, "worker worker.1 up"),
        ("worker", 2, "worker worker.2 up"),
    }
    times = [e["at"] for e in first["lines"]]
    assert None not in times and times == sorted(times)  # merged in time order
    assert len((await logs(rig, lines=3))["lines"]) == 3

    # With the cursor: only what came since, stdout and stderr.
    cursor = first["cursor"]
    assert get(port, "/hello-1")[0] == 200 and get(port, "/err-1")[0] == 200
    newer = await logs_until(rig, lambda o: "oops /err-1" in shown(o), "/err-1", cursor=cursor)
    assert f"listening on {port}" not in shown(newer)
    assert {**web, "line": "GET /hello-1"}.items() <= next(
        e for e in newer["lines"] if e["line"] == "GET /hello-1"
    ).items()
    assert next(e for e in newer["lines"] if e["line"] == "oops /err-1")["stream"] == "err"
    later = await logs(rig, cursor=newer["cursor"])
    assert "GET /hello-1" not in shown(later)

    # Following: each line printed meanwhile comes as a progress event, at once.
    frame = rig.peer.command("app.logs", {"app": "shop", "cursor": later["cursor"], "follow_s": 8})
    session = await rig.peer.session()
    await session.send(frame)
    command_id = frame.body["id"]
    await eventually(lambda: progress_lines(rig, command_id), 10, "a first followed line")
    assert get(port, "/while-following")[0] == 200
    await eventually(
        lambda: any(e["line"] == "GET /while-following" for e in progress_lines(rig, command_id)),
        10,
        "the request's line as a progress event",
    )
    # ... while the command still runs.
    assert all(f.body["command_id"] != command_id for _, f in rig.peer.frames("result"))
    done = await rig.peer.result(command_id, 30)
    assert done.body["status"] == "ok" and done.body["output"]["lines"] == []
    followed = [e["line"] for e in progress_lines(rig, command_id)]
    assert followed.count("GET /while-following") == 1
    after = await logs(rig, cursor=done.body["output"]["cursor"])
    assert "GET /while-following" not in shown(after)

    # A log of gigabytes is read from its end, within the action's 256 MiB.
    (log_file,) = Pm2Runtime(tmp_path / "pm2").log_files("shop--r1-abc1234")
    os.truncate(log_file.path, log_file.path.stat().st_size + 3 * GIB)
    for path in ("/after-the-hole-1", "/after-the-hole-2"):
        assert get(port, path)[0] == 200

    def past_the_hole(output: dict[str, Any]) -> bool:
        return "GET /after-the-hole-2" in shown(output)

    await logs_until(rig, past_the_hole, "the tail past 3 GiB", lines=50)
    await logs_until(rig, past_the_hole, "the lines past 3 GiB", cursor=after["cursor"])

    # The app gone: a clear error, as for an app never deployed here.
    removed = await rig.run(rig.peer.command("state.apply", document(2, [])), 120)
    assert removed["output"]["apps"]["shop"]["status"] == "removed", removed
    gone = await rig.run(rig.peer.command("app.logs", {"app": "shop"}))
    assert gone["status"] == "error"
    assert "shop runs no process on this server (status: removed)" in gone["message"]
    ghost = await rig.run(rig.peer.command("app.logs", {"app": "ghost"}))
    assert ghost["status"] == "error"
    assert "no app named ghost was ever deployed on this server" in ghost["message"]
    bad = await rig.run(rig.peer.command("app.logs", {"app": "shop", "cursor": "bm9wZQ"}))
    assert bad["status"] == "error" and "the cursor is not one app.logs gave" in bad["message"]
