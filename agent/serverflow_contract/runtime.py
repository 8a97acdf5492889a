"""What a process runtime (PM2, later Docker...) does for the deploy reconciler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

LogStream = Literal["out", "err"]
LogFormat = Literal["text", "json"]


class RuntimeFailure(Exception):
    """The runtime could not do what was asked; the message says why, for a person."""


@dataclass(frozen=True)
class ReleaseProcess:
    """One release of an app, to be run as a supervised process.

    `argv[0]` is an absolute path (resolved by the reconciler); nothing is ever run
    through a shell. `env` is the complete environment of the process.
    """

    name: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    status: str  # online | stopped | errored | launching | waiting restart | ...
    pid: int | None = None
    restarts: int = 0
    memory: int | None = None  # bytes
    cpu: float | None = None  # percent

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LogFile:
    """A file a runtime appends a process's output to, one record per line.

    The agent reads it from its end (never as a whole) and then follows it by byte offset;
    the runtime may truncate it or replace it (a log rotation). `format` says what a line
    holds: "text" is one line of output of `stream`, without its time; "json" is one
    object per chunk of output, holding its stream and time, as PM2 writes them with
    `log_type: json` (`{"message", "type": "out"|"err", "timestamp": ISO 8601}`) and as
    Docker's json-file driver does (`{"log", "stream": "stdout"|"stderr", "time"}`): the
    time is what lets the lines of several processes be merged in order.
    """

    path: Path
    stream: LogStream = "out"
    format: LogFormat = "text"


@runtime_checkable
class Runtime(Protocol):
    """Starts and supervises release processes (restarting them when they crash)."""

    name: str

    def start(self, process: ReleaseProcess) -> None:
        """Start it (replacing a process of the same name); returns once it is launched."""

    def stop(self, name: str) -> None:
        """Stop it but keep it known, so `restart` brings it back as it was."""

    def restart(self, name: str) -> None: ...

    def delete(self, name: str) -> None:
        """Stop and forget it; a name that is not known is not an error."""

    def status(self, prefix: str = "") -> list[ProcessInfo]:
        """The processes whose name starts with `prefix`."""

    def logs(self, name: str, lines: int = 50) -> list[str]:
        """The last output lines (stdout and stderr) of a process."""

    def log_files(self, name: str) -> list[LogFile]:
        """Where a process's output is written (empty for a name it does not know).

        Called for every process of an app and again while its logs are followed, so it
        should not have to ask a daemon (PM2 reads the ecosystem file it wrote)."""
