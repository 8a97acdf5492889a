"""Running one action in its own process: no shell, a timeout, a memory limit.

Each action runs serverflow_agent.runner in a process of its own, in a new session (so
a timeout kills the whole process group, including anything the action spawned) with
RLIMIT_AS set by the child before the handler's module is imported. The process is
forked by serverflow_agent.forkserver, a small process started once and restarted if it
dies, rather than started as a fresh Python each time: the same isolation, without tens
of milliseconds of interpreter start-up on every command. While it runs, the progress lines
it reports (serverflow_agent.progress) come through a pipe of their own and are handed
to a callback as they arrive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_agent import forkserver
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
        self._forks: ForkServer | None = None

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
        try:
            child = await self._start(write_fd)
        except OSError as exc:
            os.close(read_fd)
            return Outcome("error", code="CMD011", message=f"cannot start the action: {exc}")
        finally:
            os.close(write_fd)  # the child holds the only write end now: EOF when it exits
        self._running.add(child.pid)
        reader = asyncio.ensure_future(_read_progress(read_fd, progress))
        try:
            return await self._supervise(child, request, spec)
        finally:
            self._running.discard(child.pid)
            try:
                await asyncio.wait_for(reader, 0.5)
            except (TimeoutError, asyncio.CancelledError):
                reader.cancel()

    async def _start(self, progress_fd: int) -> Child:
        """A child from the fork server, started (again) if it is not running."""
        for attempt in (1, 2):
            if self._forks is None or not self._forks.alive:
                self._forks = await ForkServer.start(self.env)
            try:
                return await self._forks.spawn(progress_fd)
            except ForkServerGone:
                if attempt == 2:
                    raise
                log.warning("the action fork server went away; starting it again")
        raise AssertionError("unreachable")

    async def _supervise(self, child: Child, request: bytes, spec: ActionSpec) -> Outcome:
        stdout = asyncio.ensure_future(_read_bounded(child.stdout, MAX_OUTPUT_BYTES + 1))
        stderr = asyncio.ensure_future(_read_tail(child.stderr, STDERR_TAIL_BYTES))
        try:
            async with asyncio.timeout(spec.timeout):
                await child.feed(request)
                returncode = await child.wait()
                out = await stdout
        except TimeoutError:
            child.kill()
            await child.wait()
            stdout.cancel()
            stderr.cancel()
            return Outcome(
                "error",
                code="CMD010",
                message=f"{spec.name} did not finish within {spec.timeout:g} s and was killed",
            )
        except asyncio.CancelledError:
            child.kill()
            stdout.cancel()
            stderr.cancel()
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
        """On shutdown: no action outlives the agent (nor the fork server)."""
        for pid in list(self._running):
            _kill_group(pid)
        if self._forks is not None:
            self._forks.close()
            self._forks = None


class ForkServerGone(OSError):
    """The fork server exited or stopped answering."""


class ForkServer:
    """The agent's end of serverflow_agent.forkserver."""

    def __init__(self, sock: socket.socket, process: asyncio.subprocess.Process) -> None:
        self.sock = sock
        self.process = process
        self.alive = True
        self._asked: collections.deque[asyncio.Future[int]] = collections.deque()
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def start(cls, env: dict[str, str]) -> ForkServer:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "serverflow_agent.forkserver",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                env={**env, forkserver.SOCKET_FD_ENV: str(theirs.fileno())},
                cwd="/",
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        log.debug("action fork server started, pid %d", process.pid)
        return cls(ours, process)

    async def spawn(self, progress_fd: int) -> Child:
        if not self.alive:
            raise ForkServerGone("the fork server is not running")
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        theirs = [stdin_r, stdout_w, stderr_w, progress_fd]
        ours = [stdin_w, stdout_r, stderr_r]
        try:
            asked: asyncio.Future[int] = self._loop.create_future()
            try:
                socket.send_fds(self.sock, [json.dumps({"progress_fd": True}).encode()], theirs)
            except (BlockingIOError, OSError) as exc:
                self._gone(f"cannot ask the fork server: {exc}")
                raise ForkServerGone(str(exc)) from exc
            self._asked.append(asked)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs[:3]:
                os.close(fd)
        try:
            pid = await asked
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        exited = self._exits.setdefault(pid, self._loop.create_future())
        return Child(pid, stdin_w, await _stream(stdout_r), await _stream(stderr_r), exited)

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(forkserver.MAX_MESSAGE_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._gone(f"the fork server's socket failed: {exc}")
                return
            if not data:
                self._gone("the fork server exited")
                return
            try:
                message = json.loads(data)
                if "exit" in message:
                    exited = self._exits.setdefault(
                        int(message["exit"]), self._loop.create_future()
                    )
                    if not exited.done():
                        exited.set_result(int(message["status"]))
                    self._exits.pop(int(message["exit"]), None)
                    continue
                asked = self._asked.popleft()
            except (ValueError, KeyError, TypeError, IndexError):
                self._gone(f"the fork server said something unexpected: {data[:200]!r}")
                return
            if asked.done():
                continue
            if "pid" in message:
                asked.set_result(int(message["pid"]))
            else:
                asked.set_exception(OSError(str(message.get("error"))))

    def _gone(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        log.warning("action fork server lost: %s", why)
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        while self._asked:
            asked = self._asked.popleft()
            if not asked.done():
                asked.set_exception(ForkServerGone(why))
        # Nobody can report how these end any more: they are stopped, not left unwatched.
        for pid, exited in self._exits.items():
            _kill_group(pid)
            if not exited.done():
                exited.set_result(-signal.SIGKILL)
        self._exits.clear()

    def close(self) -> None:
        self._gone("the agent is stopping")
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class Child:
    """One action's process, forked by the fork server (not our own child: its exit
    status comes from the server)."""

    def __init__(
        self,
        pid: int,
        stdin: int,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        exited: asyncio.Future[int],
    ) -> None:
        self.pid, self._stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self._exited = exited

    async def feed(self, data: bytes) -> None:
        """Write the request to the child's stdin, then close it (it reads to EOF)."""
        fd, self._stdin = self._stdin, -1
        if fd < 0:
            return
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_writer(fd, _set_once, ready)
                    try:
                        await ready
                    finally:
                        loop.remove_writer(fd)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child stopped reading: its exit status says why
        finally:
            os.close(fd)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1
        if not self._exited.done():
            _kill_group(self.pid)
            # Killed before its setsid(): it has no group of its own yet.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _stream(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader


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
