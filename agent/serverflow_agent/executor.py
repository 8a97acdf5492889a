"""Running one action in its own process: no shell, a timeout, a memory limit.

Each action runs as `python -m serverflow_agent.runner` in a new session (so a timeout
kills the whole process group, including anything the action spawned) with RLIMIT_AS set
by the child before the handler's module is imported. While it runs, the progress lines
it reports (serverflow_agent.progress) come through a pipe of their own and are handed
to a callback as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_agent import progress as progress_lines
from serverflow_agent.config import STATE_DIR_ENV
from serverflow_agent.runner import EXIT_MEMORY
from serverflow_contract import protocol
from serverflow_contract.actions import ActionSpec

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = protocol.MAX_FRAME_BYTES
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 20
MAX_PROGRESS_RECORD_BYTES = 16384
PROGRESS_PIPE_BYTES = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Outcome:
    """What happened to one action run; becomes the body of a `result` frame."""

    status: str  # ok | error
    output: Any = None
    code: str | None = None
    message: str | None = None


class Executor:
    def __init__(self, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.env = dict(os.environ if env is None else env)
        self.env[STATE_DIR_ENV] = str(state_dir)
        self._running: set[int] = set()

    async def run(
        self,
        spec: ActionSpec,
        params: dict[str, Any],
        progress: ProgressCallback | None = None,
    ) -> Outcome:
        """Run one action; `progress` gets each `{"app", "stage", "line"}` it reports."""
        request = json.dumps(
            {
                "handler": spec.handler,
                "params": params,
                "memory_limit_mb": spec.memory_limit_mb,
                "limit_children": spec.limit_children,
            }
        ).encode()
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):  # room for a burst of build output (Linux)
            fcntl.fcntl(read_fd, F_SETPIPE_SZ, PROGRESS_PIPE_BYTES)
        env = {**self.env, progress_lines.PROGRESS_FD_ENV: str(write_fd)}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "serverflow_agent.runner",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                pass_fds=(write_fd,),
                env=env,
                cwd="/",
            )
        except OSError as exc:
            os.close(read_fd)
            return Outcome("error", code="CMD011", message=f"cannot start the action: {exc}")
        finally:
            os.close(write_fd)  # the child holds the only write end now: EOF when it exits
        self._running.add(proc.pid)
        reader = asyncio.ensure_future(_read_progress(read_fd, progress))
        try:
            return await self._supervise(proc, request, spec)
        finally:
            self._running.discard(proc.pid)
            try:
                await asyncio.wait_for(reader, 0.5)
            except (TimeoutError, asyncio.CancelledError):
                reader.cancel()

    async def _supervise(
        self, proc: asyncio.subprocess.Process, request: bytes, spec: ActionSpec
    ) -> Outcome:
        assert proc.stdin and proc.stdout and proc.stderr
        stdout = asyncio.ensure_future(_read_bounded(proc.stdout, MAX_OUTPUT_BYTES + 1))
        stderr = asyncio.ensure_future(_read_tail(proc.stderr, STDERR_TAIL_BYTES))
        try:
            async with asyncio.timeout(spec.timeout):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.write(request)
                    await proc.stdin.drain()
                    proc.stdin.close()
                returncode = await proc.wait()
                out = await stdout
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            stdout.cancel()
            stderr.cancel()
            return Outcome(
                "error",
                code="CMD010",
                message=f"{spec.name} did not finish within {spec.timeout:g} s and was killed",
            )
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            raise
        # Something the action spawned may still hold stderr open: do not wait for it.
        try:
            err = await asyncio.wait_for(stderr, 0.5)
        except TimeoutError:
            err = b""
        tail = _tail_lines(err)
        if returncode == EXIT_MEMORY:
            return Outcome(
                "error",
                code="CMD012",
                message=f"{spec.name} exceeded its memory limit of {spec.memory_limit_mb} MiB",
            )
        if returncode != 0:
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
            )
            return Outcome("error", code="CMD011", message=_message(f"{spec.name} {how}", tail))
        if len(out) > MAX_OUTPUT_BYTES:
            return Outcome("error", code="CMD011", message=f"{spec.name} output is too large")
        try:
            answer = json.loads(out)
            ok = answer["ok"]
        except (ValueError, KeyError, TypeError):
            return Outcome(
                "error",
                code="CMD011",
                message=_message(f"{spec.name} did not answer with a result", tail),
            )
        if ok is True:
            return Outcome("ok", output=answer.get("output"))
        return Outcome(
            "error",
            code="CMD011",
            message=_message(str(answer.get("error") or "action failed"), tail),
        )

    def kill_all(self) -> None:
        """On shutdown: no action outlives the agent."""
        for pid in list(self._running):
            _kill_group(pid)


def _kill_group(pid: int) -> None:
    # start_new_session made the child a process-group leader: pgid == pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _read_progress(fd: int, callback: ProgressCallback | None) -> None:
    """Hand each progress record to `callback` until the child closes its end.

    Reading never waits for the callback's consumer: the callback must only queue.
    A record longer than the limit is cut (the runner never writes one).
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_PROGRESS_RECORD_BYTES)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    buffer = b""
    try:
        while chunk := await reader.read(65536):
            buffer += chunk
            *records, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_PROGRESS_RECORD_BYTES:
                records.append(buffer[:MAX_PROGRESS_RECORD_BYTES])
                buffer = b""
            if callback is None:
                continue
            for record in records:
                if not record.strip():
                    continue
                for item in progress_lines.parse(record):
                    try:
                        callback(item)
                    except Exception:
                        log.exception("progress callback failed")
    finally:
        transport.close()


async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Keep the first `limit` bytes; drain the rest so the child never blocks on a full pipe."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        if size < limit:
            chunks.append(chunk[: limit - size])
        size += len(chunk)
    return b"".join(chunks)


async def _read_tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    tail = b""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return tail
        tail = (tail + chunk)[-keep:]


def _tail_lines(data: bytes) -> str:
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _message(head: str, tail: str) -> str:
    # A result message holds at most 4000 characters (protocol): keep both ends readable.
    head = head[:1000]
    return f"{head}\n{tail[-2900:]}" if tail else head
