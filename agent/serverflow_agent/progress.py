"""Progress lines from a running action to the agent, and from the agent to the control plane.

Action side: `emit(line, app, stage)` writes one JSON object per line to a pipe the
executor handed to the runner (its fd number in SERVERFLOW_PROGRESS_FD). The pipe is
non-blocking: when the agent cannot keep up, lines wait in a bounded queue and the oldest
are dropped (and counted); the action never waits. Stdout stays reserved for the
action's final answer.

Agent side: `parse` turns what came through the pipe into bounded items, and `Coalescer`
decides what goes into `event` frames: one frame per line while the rate is low, several
lines of the same app and stage joined with "\\n" in one frame when a build spews.

Standard library only: the runner imports this before the action's memory limit is set.
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from collections import deque
from typing import Any

PROGRESS_FD_ENV = "SERVERFLOW_PROGRESS_FD"
MAX_LINE_CHARS = 2000
MAX_NAME_CHARS = 100
# A single write of at most PIPE_BUF bytes to a pipe is atomic: a line is never torn.
MAX_RECORD_BYTES = 4000

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

PENDING_RECORDS = 2000


class _Outlet:
    """The action's end of the pipe. Records the pipe cannot take right now wait in a
    bounded queue (the oldest are dropped and counted), so the action never blocks and
    the latest lines, the ones that say what went wrong, are the ones kept."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.pending: deque[tuple[bytes, str | None, str | None]] = deque()
        self.dropped = 0
        self.dropped_at: tuple[str | None, str | None] = (None, None)

    def put(self, record: bytes, app: str | None, stage: str | None) -> None:
        if len(self.pending) >= PENDING_RECORDS:
            _, dropped_app, dropped_stage = self.pending.popleft()
            self.dropped += 1
            self.dropped_at = (dropped_app, dropped_stage)
        self.pending.append((record, app, stage))
        self.flush()

    def flush(self, timeout: float = 0) -> None:
        deadline = time.monotonic() + timeout
        while self.fd is not None and (self.pending or self.dropped):
            if self.dropped:
                app, stage = self.dropped_at
                line = f"[{self.dropped} progress lines dropped: output too fast]"
                data = _record(line, app, stage)
            else:
                data = self.pending[0][0]
            try:
                os.write(self.fd, data)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                select.select([], [self.fd], [], left)
                continue
            except OSError:
                self.fd = None  # the agent went away: the action carries on without it
                self.pending.clear()
                return
            if self.dropped:
                self.dropped = 0
            else:
                self.pending.popleft()


_outlet = _Outlet()


def attach(fd: int | None) -> None:
    """Send this process's progress to `fd` (the runner calls this once; None: discard)."""
    _outlet.fd = fd
    if fd is not None:
        os.set_inheritable(fd, False)  # nothing the action spawns may write to it
        os.set_blocking(fd, False)


def attach_from_environment() -> None:
    """Take the fd the executor passed, and hide it from the processes the action starts."""
    raw = os.environ.pop(PROGRESS_FD_ENV, None)
    if raw is not None and raw.isdigit():
        try:
            attach(int(raw))
        except OSError:
            attach(None)


def flush(timeout: float = 0) -> None:
    """Write out what waits (up to `timeout` seconds): the runner does before exiting,
    commands the action waits on do while they run."""
    _outlet.flush(timeout)


def clean(text: str) -> str:
    """One displayable line: no colour codes, no carriage-return redraws, bounded."""
    if "\r" in text:
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    text = _CONTROL.sub("", _ANSI.sub("", text.replace("\t", "    ")))
    return text[:MAX_LINE_CHARS]


def _record(text: str, app: str | None, stage: str | None) -> bytes:
    while True:
        record = {"line": text, "app": app, "stage": stage}
        data = json.dumps(record, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
        if len(data) <= MAX_RECORD_BYTES:
            return data
        text = text[: len(text) * 3 // 4]


def emit(line: str, app: str | None = None, stage: str | None = None) -> None:
    """Report progress (one or more lines). Never blocks, never raises."""
    if _outlet.fd is None:
        return
    app, stage = _name(app), _name(stage)
    for part in str(line).split("\n"):
        _outlet.put(_record(clean(part), app, stage), app, stage)


# -- agent side -------------------------------------------------------------------------


def _name(value: Any) -> str | None:
    return value[:MAX_NAME_CHARS] if isinstance(value, str) and value else None


def parse(raw: bytes) -> list[dict[str, Any]]:
    """The items one pipe record stands for: `{"app", "stage", "line"}`, bounded."""
    try:
        record = json.loads(raw)
    except ValueError:
        record = {"line": raw.decode("utf-8", "replace")}
    if not isinstance(record, dict):
        record = {"line": str(record)}
    app, stage = _name(record.get("app")), _name(record.get("stage"))
    return [{"app": app, "stage": stage, "line": clean(str(record.get("line", "")))}]


class Coalescer:
    """The backlog of progress items of one command, and how it is cut into frames.

    `push` is cheap and never blocks. `take` returns the data of the next frames: one line
    per frame while the backlog is short; when it is longer than a tick's worth, runs of
    lines with the same app and stage are joined with "\\n" (at most `frame_chars`
    characters per frame). Past `max_pending` lines the oldest are dropped and counted.
    """

    def __init__(
        self, frames_per_take: int = 20, frame_chars: int = 16_000, max_pending: int = 5_000
    ) -> None:
        self.frames_per_take = frames_per_take
        self.frame_chars = frame_chars
        self.max_pending = max_pending
        self._pending: deque[dict[str, Any]] = deque()
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, item: dict[str, Any]) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append(item)

    def take(self) -> list[dict[str, Any]]:
        if self._dropped:
            first = self._pending[0] if self._pending else {"app": None, "stage": None}
            note = {
                "app": first.get("app"),
                "stage": first.get("stage"),
                "line": f"[{self._dropped} progress lines dropped: output too fast]",
            }
            self._pending.appendleft(note)
            self._dropped = 0
        frames: list[dict[str, Any]] = []
        merge = len(self._pending) > self.frames_per_take
        while self._pending and len(frames) < self.frames_per_take:
            item = dict(self._pending.popleft())
            if merge:
                lines = [item["line"]]
                size = len(item["line"])
                while self._pending:
                    nxt = self._pending[0]
                    if (nxt.get("app"), nxt.get("stage")) != (item.get("app"), item.get("stage")):
                        break
                    if size + 1 + len(nxt["line"]) > self.frame_chars:
                        break
                    self._pending.popleft()
                    lines.append(nxt["line"])
                    size += 1 + len(nxt["line"])
                item["line"] = "\n".join(lines)
            frames.append(item)
        return frames
