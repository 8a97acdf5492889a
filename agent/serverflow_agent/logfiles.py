"""Reading the files a runtime writes a process's output to (serverflow_contract.runtime
.LogFile): the last lines, read from the end, then what was added since a position.

Reading is bounded whatever the file's size: at most MAX_TAIL_BYTES from its end, at
most MAX_READ_BYTES of what was added (older bytes are skipped: only the last lines are
wanted anyway). A `Position` is the file's inode (a rotation replaces the file), the
offset of the first byte not read yet (a truncated file is read again from its start),
and the streams whose last line was shown before its end came: the rest of such a line
is shown as a line of its own, and the bare newline that ends it as nothing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from serverflow_agent.progress import clean
from serverflow_contract.runtime import LogFile

BLOCK = 64 * 1024
MAX_TAIL_BYTES = 4 * 1024 * 1024
MAX_READ_BYTES = 4 * 1024 * 1024
STREAMS = {"out": "out", "stdout": "out", "err": "err", "stderr": "err"}
_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class Position:
    inode: int
    offset: int
    open: frozenset[str] = field(default_factory=frozenset)

    def encode(self) -> list[Any]:
        return [self.inode, self.offset, "".join(sorted(s[0] for s in self.open))]

    @classmethod
    def decode(cls, value: Any) -> Position | None:
        """A position from `encode`, or None for anything else (a made-up cursor)."""
        if not (isinstance(value, list) and len(value) == 3):
            return None
        inode, offset, open_ = value
        if not (isinstance(inode, int) and isinstance(offset, int) and isinstance(open_, str)):
            return None
        if offset < 0:
            return None
        return cls(inode, offset, frozenset(s for s in ("out", "err") if s[0] in open_))


@dataclass(frozen=True)
class Line:
    stream: str  # "out" | "err"
    text: str
    at: int | None = None  # ms since the epoch, when the file says


def tail(file: LogFile, count: int) -> tuple[list[Line], Position | None]:
    """The last `count` lines of the file and the position after them (None: no file)."""
    try:
        f = open(file.path, "rb")
    except OSError:
        return [], None
    with f:
        stat = os.fstat(f.fileno())
        end = _complete_end(f, stat.st_size)
        start = end
        lines: list[Line] = []
        opened: frozenset[str] = frozenset()
        while start > 0 and end - start < MAX_TAIL_BYTES:
            start = max(0, end - min(MAX_TAIL_BYTES, max(BLOCK, 2 * (end - start))))
            f.seek(start)
            data = f.read(end - start)
            if start > 0:  # the first line is cut: start after it
                data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
            lines, opened = _lines(file, data, frozenset())
            if len(lines) >= count:
                break
    return lines[-count:], Position(stat.st_ino, end, opened)


def since(
    file: LogFile, position: Position | None, count: int
) -> tuple[list[Line], Position | None]:
    """The lines added since `position` (None: since the file began), at most the last
    `count`, and the new position."""
    try:
        f = open(file.path, "rb")
    except OSError:
        return [], None
    with f:
        stat = os.fstat(f.fileno())
        if position is None or position.inode != stat.st_ino or stat.st_size < position.offset:
            position = Position(stat.st_ino, 0)  # new, replaced or truncated
        if stat.st_size == position.offset:
            return [], position
        start = position.offset
        opened = position.open
        if stat.st_size - start > MAX_READ_BYTES:
            start, opened = stat.st_size - MAX_READ_BYTES, frozenset()
        f.seek(start)
        data = f.read(stat.st_size - start)
        if start != position.offset:
            data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
            start = stat.st_size - len(data)
        complete = data.rfind(b"\n") + 1
        if complete == 0 and len(data) < MAX_READ_BYTES:
            return [], Position(stat.st_ino, start, opened)  # a line still being written
        if complete:
            data = data[:complete]
        lines, opened = _lines(file, data, opened)
    return lines[-count:], Position(stat.st_ino, start + len(data), opened)


def _complete_end(f: Any, size: int) -> int:
    """The offset after the file's last newline: a line being written is left for later."""
    start = max(0, size - BLOCK)
    f.seek(start)
    data = f.read(size - start)
    last = data.rfind(b"\n")
    if last < 0:
        return size if size >= BLOCK else start  # no newline near the end: a huge line
    return start + last + 1


def _lines(file: LogFile, data: bytes, opened: frozenset[str]) -> tuple[list[Line], frozenset[str]]:
    if file.format == "json":
        return _assemble(_records(data, file.stream), opened)
    text = [Line(file.stream, clean(_decode(raw))) for raw in data.split(b"\n")]
    return (text[:-1] if data.endswith(b"\n") else text), frozenset()


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _records(data: bytes, default: str) -> Iterator[tuple[str, str, int | None]]:
    """(stream, output, time) of each JSON record; a line that is none is output."""
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            yield default, _decode(raw) + "\n", None
            continue
        message = record.get("message", record.get("log"))
        stream = STREAMS.get(str(record.get("type", record.get("stream"))), default)
        at = _ms(record.get("timestamp", record.get("time")))
        yield stream, message if isinstance(message, str) else str(message), at


def _ms(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp() * 1000)


def _assemble(
    records: Iterable[tuple[str, str, int | None]], shown: frozenset[str]
) -> tuple[list[Line], frozenset[str]]:
    """Lines from chunks of output: a line may come in several chunks, and a chunk may
    hold several lines; the time of a line is that of the chunk it starts in."""
    lines: list[Line] = []
    # stream -> (text, time, place in `lines`, order in which the pending lines began)
    pending: dict[str, tuple[str, int | None, int, int]] = {}
    continuing = set(shown)  # streams whose current line was shown already
    for number, (stream, output, at) in enumerate(records):
        pieces = output.split("\n")
        for piece in pieces[:-1]:
            text, started, place, began = pending.pop(stream, ("", at, len(lines), number))
            text += piece
            if text or stream not in continuing:
                lines.insert(place, Line(stream, clean(text), started))
                for other, (o_text, o_at, o_place, o_began) in pending.items():
                    if o_place > place or (o_place == place and o_began > began):
                        pending[other] = (o_text, o_at, o_place + 1, o_began)  # began later
            continuing.discard(stream)
        if pieces[-1]:
            text, started, place, began = pending.get(stream, ("", at, len(lines), number))
            pending[stream] = (text + pieces[-1], started, place, began)
    # A line still open at the end is shown as far as it goes, where it began.
    last_first = sorted(pending.items(), key=lambda p: (-p[1][2], -p[1][3]))
    for stream, (text, started, place, _) in last_first:
        lines.insert(place, Line(stream, clean(text), started))
        continuing.add(stream)
    return lines, frozenset(continuing)
