"""Starting external programs from an action: argv only, bounded time, no memory limit.

Actions that start long-lived or heavy programs (git, npm, pip, the PM2 daemon and the
apps it starts) declare `limit_children=False`: the runner then sets only the soft
RLIMIT_AS on itself, and every program started here gets the soft limit raised back to
the hard one before it executes. Without this, the PM2 daemon started by a deploy would
keep the action's 512 MiB address-space limit forever (Node cannot even start under it),
and so would every app it runs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from serverflow_agent import progress
from serverflow_agent.progress import clean

MAX_LINE_BYTES = 8192


class CommandTimeout(Exception):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{' '.join(argv)[:200]} did not finish within {timeout:g} s")
        self.argv = list(argv)
        self.timeout = timeout


class CommandNotFound(Exception):
    def __init__(self, program: str) -> None:
        super().__init__(f"command not found: {program}")
        self.program = program


def lift_memory_limit() -> None:
    """preexec_fn: the child starts without the action's (soft) address-space limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


@dataclass
class Finished:
    argv: list[str]
    returncode: int
    tail: list[str] = field(default_factory=list)  # the last lines of stdout + stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def kill_tree(pid: int) -> None:
    """Kill a process and everything it started (that is still its descendant)."""
    try:
        parent = psutil.Process(pid)
        victims = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(victims, timeout=5)


def stream(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | str | None = None,
    on_line: Callable[[str], None] | None = None,
    keep: int = 40,
) -> Finished:
    """Run `argv`, handing each output line (stdout and stderr merged) to `on_line`."""
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
            preexec_fn=lift_memory_limit,  # the runner is single-threaded
        )
    except FileNotFoundError as exc:
        raise CommandNotFound(argv[0]) from exc
    except PermissionError as exc:
        raise CommandNotFound(f"{argv[0]} (not executable)") from exc
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=keep)

    def line_out(raw: bytes) -> None:
        line = clean(raw.decode("utf-8", "replace").rstrip("\n"))
        tail.append(line)
        if on_line is not None:
            on_line(line)

    deadline = time.monotonic() + timeout
    drain_until: float | None = None
    buffer = b""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now > deadline:
                kill_tree(proc.pid)
                proc.wait()
                proc.stdout.close()
                raise CommandTimeout(argv, timeout)
            if drain_until is None and proc.poll() is not None:
                # Something it started in the background may hold the pipe open: read
                # what is already there, but do not wait for it.
                drain_until = now + 0.5
            if drain_until is not None and now > drain_until:
                break
            progress.flush()  # lines the agent could not take yet, while we wait anyway
            wait = min(deadline, drain_until or deadline) - now
            if not selector.select(min(wait, 0.2)):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line_out(raw)
            if len(buffer) > MAX_LINE_BYTES:
                line_out(buffer[:MAX_LINE_BYTES])
                buffer = b""
    if buffer:
        line_out(buffer)
    proc.stdout.close()
    returncode = proc.wait()
    return Finished(list(argv), returncode, list(tail))


def capture(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` and return its stdout and stderr as text."""
    try:
        return subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            close_fds=True,
            preexec_fn=lift_memory_limit,  # the runner is single-threaded
        )
    except FileNotFoundError as exc:
        raise CommandNotFound(argv[0]) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(argv, timeout) from exc
