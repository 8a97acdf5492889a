"""An app's own output (what its processes print), from the agents of its servers.

Each server's agent answers the read action `app.logs` with the app's last lines there
and a cursor. Following runs `app.logs` again and again with the cursor and `follow_s`:
the agent sends each new line at once as a progress event (JSON of one line), which is
forwarded as it comes, until the follower goes away. A command that is running then is
left to finish (shielded), so its result and audit record land as for any other.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from serverflow.agents.registry import check_action
from serverflow.controlplane import ControlPlane
from serverflow.errors import (
    AgentUnavailable,
    Conflict,
    LogsUnavailable,
    NotFound,
    PermissionDenied,
    ServerFlowError,
)
from serverflow.models import App, AppServer, Command, CommandStatus, Server
from serverflow.tenancy import scoped

log = logging.getLogger(__name__)

ACTION = "app.logs"
FOLLOW_S = 25  # each following command watches this long; then the next one takes over
RETRY_S = (2.0, 5.0, 10.0, 30.0)  # after a failure, wait this long before asking again
KEEPALIVE_S = 15.0
MAX_PENDING = 5000  # lines waiting for a slow follower; past that, the oldest are dropped
# Errors that asking again will not mend: the server is left out of the follow.
FINAL = (NotFound, PermissionDenied)

Put = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Problem:
    """Why a server's lines are missing."""

    server: str
    code: str
    message: str

    @classmethod
    def of(cls, server: Server, exc: ServerFlowError) -> Problem:
        return cls(server.name, exc.code, exc.message)


@dataclass
class Snapshot:
    lines: list[dict[str, Any]] = field(default_factory=list)  # each with its "server"
    problems: list[Problem] = field(default_factory=list)
    cursors: dict[Any, str] = field(default_factory=dict)  # server id -> cursor
    errors: list[ServerFlowError] = field(default_factory=list)


async def servers_of(org_id: Any, app: App) -> list[Server]:
    async with scoped(org_id):
        ids = [p.server_id for p in await AppServer.filter(app_id=app.id)]
        servers = await Server.filter(id__in=ids).order_by("name") if ids else []
    if not servers:
        raise Conflict(f"{app.name} is not placed on any server", code="APP003")
    return list(servers)


async def ask(
    cp: ControlPlane,
    org_id: Any,
    server: Server,
    params: dict[str, Any],
    issued_by: str,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One `app.logs` command and its output; AGT001 (offline) or LOG001 (it failed)."""
    if not cp.hub.connected(server):
        raise AgentUnavailable(f"the agent of {server.name} is not connected ({server.status})")
    spec = check_action(server, ACTION, params)
    timeout = float(spec["timeout"]) + 15
    command: Command = await cp.hub.run(
        org_id, server, ACTION, spec["kind"], params, issued_by, timeout, on_progress
    )
    if command.status != CommandStatus.OK or not isinstance(command.output, dict):
        why = command.message or str(command.status)
        raise LogsUnavailable(f"{server.name}: {why}")
    return command.output


def with_server(server: Server, entry: Any) -> dict[str, Any] | None:
    """A line as the API shows it, from what an agent sent (None: not a line)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("line"), str):
        return None
    return {
        "server": server.name,
        "type": str(entry.get("type") or ""),
        "index": entry.get("index") if isinstance(entry.get("index"), int) else 1,
        "release": str(entry.get("release") or ""),
        "stream": "err" if entry.get("stream") == "err" else "out",
        "line": entry["line"],
        "at": entry.get("at") if isinstance(entry.get("at"), int) else None,
    }


def merged(lines: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The last `count` lines of several servers, in time order where it is known."""
    keyed, last = [], 0
    for line in lines:
        last = line["at"] if line["at"] is not None else last
        keyed.append((last, line))
    keyed.sort(key=lambda pair: pair[0])
    return [line for _, line in keyed][-count:]


async def snapshot(cp: ControlPlane, org_id: Any, app: App, issued_by: str, lines: int) -> Snapshot:
    """The last `lines` lines of the app on all its servers. Servers that cannot answer
    are listed as problems; if none answers, the first one's error is raised."""
    servers = await servers_of(org_id, app)
    params = {"app": app.name, "lines": lines}
    answers = await asyncio.gather(
        *(ask(cp, org_id, s, params, issued_by) for s in servers), return_exceptions=True
    )
    found = Snapshot()
    collected = []
    for server, answer in zip(servers, answers, strict=True):
        if isinstance(answer, ServerFlowError):
            found.problems.append(Problem.of(server, answer))
            found.errors.append(answer)
            continue
        if isinstance(answer, BaseException):
            raise answer
        found.cursors[server.id] = str(answer.get("cursor") or "")
        collected += [e for e in (with_server(server, x) for x in answer["lines"]) if e]
    if len(found.errors) == len(servers):
        raise found.errors[0]
    found.lines = merged(collected, lines)
    return found


async def follow(
    cp: ControlPlane, org_id: Any, app: App, issued_by: str, start: Snapshot, lines: int
) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
    """("log", line), ("notice", problem) and ("keep-alive", {}) events as they come,
    from every server of the app, until the caller stops iterating."""
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    dropped = 0

    def put(event: str, data: dict[str, Any]) -> None:
        nonlocal dropped
        if queue.qsize() >= MAX_PENDING:
            queue.get_nowait()
            dropped += 1
        queue.put_nowait((event, data))

    servers = await servers_of(org_id, app)
    tasks = [
        asyncio.create_task(
            _follow_server(
                cp, org_id, app, server, issued_by, start.cursors.get(server.id), lines, put
            )
        )
        for server in servers
    ]
    for task in tasks:
        task.add_done_callback(_reported)
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield "keep-alive", {}
                continue
            if dropped:
                message = f"{dropped} lines dropped: the output came faster than it was read"
                yield "notice", {"server": None, "code": None, "message": message}
                dropped = 0
            yield event
    finally:
        for task in tasks:
            task.cancel()


async def _follow_server(
    cp: ControlPlane,
    org_id: Any,
    app: App,
    server: Server,
    issued_by: str,
    cursor: str | None,
    lines: int,
    put: Put,
) -> None:
    def on_progress(_command_id: str, data: dict[str, Any]) -> None:
        for text in str(data.get("line", "")).split("\n"):
            if not text:
                continue
            try:
                line = with_server(server, json.loads(text))
            except ValueError:
                line = None
            if line is None:  # the agent's own note (lines it had to drop)
                put("notice", {"server": server.name, "code": None, "message": text})
            else:
                put("log", line)

    failures = 0
    said = None
    while True:
        params: dict[str, Any] = {"app": app.name, "follow_s": FOLLOW_S}
        params.update({"cursor": cursor} if cursor else {"lines": lines})
        async with scoped(org_id):  # its status and inventory may have changed meanwhile
            fresh = await Server.get_or_none(id=server.id)
        if fresh is None:
            return
        # Shielded: a follower going away must not cut a command off from its audit.
        command = asyncio.ensure_future(ask(cp, org_id, fresh, params, issued_by, on_progress))
        command.add_done_callback(_retrieved)
        try:
            output = await asyncio.shield(command)
        except ServerFlowError as exc:
            if exc.message != said:
                put("notice", {"server": server.name, "code": exc.code, "message": exc.message})
                said = exc.message
            if isinstance(exc, FINAL):
                return
            await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
            failures += 1
            continue
        if said is not None:
            put("notice", {"server": server.name, "code": None, "message": "following again"})
        failures, said = 0, None
        cursor = str(output.get("cursor") or "") or cursor


def _retrieved(task: asyncio.Future[dict[str, Any]]) -> None:
    """A command that ends after its follower left: its failure is nobody's to report."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("app.logs command ended without a follower: %s", task.exception())


def _reported(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("following a server's app logs failed", exc_info=task.exception())
