"""A fork server for actions: `python -m serverflow_agent.forkserver`, started once.

Starting a fresh Python for every action costs tens of milliseconds; forking a small
process that has already started costs about one. The executor starts this process once
(it imports nothing but the runner's standard-library modules) and asks it, over a
private socketpair, for one child per action. The child is exactly what a fresh
`python -m serverflow_agent.runner` would be: its own session (a timeout kills its whole
process group), the pipes the executor made as stdin, stdout and stderr, the progress
pipe, and the memory limit set by the runner before the handler's module is imported.
The server never runs an action, so what one action does cannot reach the next. It
imports the built-in read actions' module (serverflow_agent.system) once, before any
fork: those are the commands asked most often and most wanting to be quick.

Protocol (SOCK_SEQPACKET, one datagram per message, JSON):
- executor -> server: `{"progress_fd": true|false}` with 3 or 4 fds attached
  (stdin, stdout, stderr[, progress]), in that order;
- server -> executor: `{"pid": N}` for each request, in the order asked (or
  `{"error": "..."}` when the fork failed), and `{"exit": N, "status": S}` when child N
  ends (S as Popen.returncode: negative for a signal).
The server exits when the executor's end closes. Standard library only.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import sys

from serverflow_agent import progress, runner

# Our own module, no threads or open files at import: safe to hold across fork().
PRELOAD = ("serverflow_agent.system",)

SOCKET_FD_ENV = "SERVERFLOW_FORKSERVER_FD"
CHILD_PROGRESS_FD = 3
MAX_MESSAGE_BYTES = 65536


def _child(fds: list[int], with_progress: bool) -> None:
    """In the forked child: become what `python -m serverflow_agent.runner` would be."""
    code = 70  # EX_SOFTWARE if anything below fails
    try:
        os.setsid()
        for signum in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        # Each wanted fd is first moved above the target numbers, then into place.
        high = [os.dup(fd) for fd in fds]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        os.closerange(len(high), os.sysconf("SC_OPEN_MAX"))
        if with_progress:
            os.environ[progress.PROGRESS_FD_ENV] = str(CHILD_PROGRESS_FD)
        else:
            os.environ.pop(progress.PROGRESS_FD_ENV, None)
        os.environ.pop(SOCKET_FD_ENV, None)
        os.chdir("/")
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        try:
            code = runner.main()
        except MemoryError:
            code = runner.EXIT_MEMORY
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    finally:
        os._exit(code)


def _send(sock: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.send(json.dumps(message).encode())


def serve(sock: socket.socket) -> int:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when this ends
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(wake_r, 4096)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            _send(sock, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})
        if sock.fileno() not in ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE_BYTES, 4)
        except InterruptedError:
            continue
        except (ConnectionResetError, OSError):
            return 0
        if not data:
            return 0  # the agent is gone
        try:
            request = json.loads(data)
            with_progress = request.get("progress_fd") is True
            if len(fds) != (4 if with_progress else 3):
                raise ValueError(f"{len(fds)} fds for progress_fd={with_progress}")
            pid = os.fork()
        except (ValueError, AttributeError, OSError) as exc:
            for fd in fds:
                os.close(fd)
            _send(sock, {"error": f"{type(exc).__name__}: {exc}"})
            continue
        if pid == 0:
            sock.close()
            os.close(wake_r)
            os.close(wake_w)
            _child(fds, with_progress)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        _send(sock, {"pid": pid})


def main() -> int:
    fd = int(os.environ[SOCKET_FD_ENV])
    for module in PRELOAD:
        importlib.import_module(module)
    sock = socket.socket(fileno=fd)
    return serve(sock)


if __name__ == "__main__":
    sys.exit(main())
