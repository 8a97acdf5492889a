"""`app.logs`: what an app's processes on this server print, merged in time order, and
followed for a while (docs/deploys.md, "Logs").

The processes are found through the runtimes (names made by `naming.process_name`), their
files through `Runtime.log_files`, and read with serverflow_agent.logfiles. The cursor
is opaque to the control plane: base64url JSON of a position per log file.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serverflow_agent import logfiles, progress
from serverflow_agent.config import state_dir_from
from serverflow_agent.deploy.releases import AppDir
from serverflow_agent.deploy.runtimes import load_runtimes
from serverflow_agent.deploy.settings import DeploySettings
from serverflow_contract import naming
from serverflow_contract.runtime import LogFile, Runtime, RuntimeFailure

DEFAULT_LINES = 100
MAX_LINES = 1000
# The answer goes back in one frame (1 MiB at most): the oldest lines give way first.
MAX_ANSWER_CHARS = 600_000
POLL_S = 0.2
RELIST_S = 2.0  # while following, look for new processes (a deploy) this often
STAGE = "log"
CURSOR_VERSION = 1

Positions = dict[str, logfiles.Position | None]


class LogsError(Exception):
    """The app's logs cannot be read on this server; the message says why."""


@dataclass(frozen=True)
class Process:
    name: str
    release: str
    type: str
    index: int
    files: tuple[LogFile, ...]

    def keys(self) -> list[tuple[str, LogFile]]:
        return [(f"{self.name}#{i}", file) for i, file in enumerate(self.files)]


def read(params: dict[str, Any]) -> dict[str, Any]:
    """The handler of the `app.logs` action (runs in the action runner)."""
    state_dir = state_dir_from(None)
    settings = DeploySettings.load(state_dir)
    return AppLogs(settings, load_runtimes(settings)).read(params)


class AppLogs:
    def __init__(self, settings: DeploySettings, runtimes: Mapping[str, Runtime]) -> None:
        self.settings = settings
        self.runtimes = runtimes

    def processes(self, app: str) -> tuple[list[Process], list[str]]:
        """The app's processes in every runtime, and what went wrong asking each."""
        found, problems = [], []
        for runtime in self.runtimes.values():
            try:
                for info in runtime.status(naming.process_prefix(app)):
                    parsed = naming.parse_process_name(app, info.name)
                    if parsed is not None:
                        files = tuple(runtime.log_files(info.name))
                        found.append(Process(info.name, *parsed, files))
            except RuntimeFailure as exc:
                problems.append(f"{runtime.name}: {exc}")
        found.sort(key=lambda p: (p.release, p.type != naming.WEB, p.type, p.index))
        return found, problems

    def _found(self, app: str) -> list[Process]:
        found, problems = self.processes(app)
        if found:
            return found
        if problems:
            raise LogsError("; ".join(problems))
        state = AppDir(self.settings.apps_dir, app).state()
        if state is None:
            raise LogsError(f"no app named {app} was ever deployed on this server")
        raise LogsError(
            f"{app} runs no process on this server (status: {state.get('status', 'unknown')})"
        )

    def read(self, params: dict[str, Any]) -> dict[str, Any]:
        app = naming.check_app_name(params["app"])
        lines = min(int(params.get("lines", DEFAULT_LINES)), MAX_LINES)
        cursor = decode_cursor(params["cursor"]) if "cursor" in params else None
        found = self._found(app)
        entries, positions = collect(found, cursor, lines)
        follow_s = params.get("follow_s")
        if follow_s:
            found, positions = self._follow(app, found, entries[-lines:], positions, follow_s)
            entries = []
        return {
            "app": app,
            "lines": bounded(entries[-lines:]),
            "cursor": encode_cursor(positions),
            "processes": [p.name for p in found],
        }

    def _follow(
        self,
        app: str,
        found: list[Process],
        first: list[dict[str, Any]],
        positions: Positions,
        seconds: float,
    ) -> tuple[list[Process], Positions]:
        """Send each line as a progress event as soon as it is read, for `seconds`."""
        deadline = time.monotonic() + seconds
        send(app, first)
        listed = time.monotonic()
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(POLL_S, left))
            if time.monotonic() - listed >= RELIST_S:
                listed = time.monotonic()
                fresh, problems = self.processes(app)
                if fresh or not problems:  # a runtime that fails now keeps what it had
                    found = fresh
            entries, positions = collect(found, positions, MAX_LINES)
            send(app, entries)
        return found, positions


def collect(
    found: list[Process], positions: Positions | None, lines: int
) -> tuple[list[dict[str, Any]], Positions]:
    """The last `lines` lines of each process (without positions), or those added since
    (with them: a file they do not name is new, read from its start), merged in time
    order where the files tell the time, and the positions after them."""
    per_file: list[list[dict[str, Any]]] = []
    after: Positions = {}
    for process in found:
        for key, file in process.keys():
            if positions is None:
                got, position = logfiles.tail(file, lines)
            else:
                got, position = logfiles.since(file, positions.get(key), lines)
            after[key] = position
            per_file.append([entry(process, line) for line in got])
    return merge(per_file), after


def entry(process: Process, line: logfiles.Line) -> dict[str, Any]:
    return {
        "type": process.type,
        "index": process.index,
        "release": process.release,
        "stream": line.stream,
        "line": line.text,
        "at": line.at,
    }


def merge(per_file: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One list in time order; a line without a time goes with the one before it."""
    keyed = []
    for entries in per_file:
        last = 0
        for e in entries:
            last = e["at"] if e["at"] is not None else last
            keyed.append((last, e))
    keyed.sort(key=lambda pair: pair[0])  # stable: each file keeps its own order
    return [e for _, e in keyed]


def bounded(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest entries that fit in an answer."""
    size, kept = 0, 0
    for e in reversed(entries):
        size += len(e["line"]) + len(e["release"]) + 100
        if size > MAX_ANSWER_CHARS:
            break
        kept += 1
    return entries[len(entries) - kept :]


def send(app: str, entries: list[dict[str, Any]]) -> None:
    for e in entries:
        progress.emit(progress_line(app, e), app=app, stage=STAGE)


def progress_line(app: str, e: dict[str, Any]) -> str:
    """The entry as one JSON progress line; a long line is cut so the JSON stays whole
    within the progress limits (serverflow_agent.progress)."""
    e = dict(e)
    while True:
        text = json.dumps(e, ensure_ascii=False, separators=(",", ":"))
        record = json.dumps({"line": text, "app": app, "stage": STAGE}, ensure_ascii=False)
        fits = len(record.encode("utf-8", "replace")) < progress.MAX_RECORD_BYTES
        if (len(text) <= progress.MAX_LINE_CHARS and fits) or not e["line"]:
            return text
        e["line"] = e["line"][: len(e["line"]) * 3 // 4]


def encode_cursor(positions: Positions) -> str:
    files = {key: p.encode() for key, p in positions.items() if p is not None}
    raw = json.dumps({"v": CURSOR_VERSION, "files": files}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Positions:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw)
        files = body["files"] if body.get("v") == CURSOR_VERSION else None
    except (binascii.Error, ValueError, TypeError, KeyError, AttributeError):
        files = None
    if not isinstance(files, dict):
        raise LogsError("the cursor is not one app.logs gave (ask again without one)")
    return {str(key): logfiles.Position.decode(value) for key, value in files.items()}
