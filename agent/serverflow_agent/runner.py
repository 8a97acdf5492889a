"""The child process that runs one action: `python -m serverflow_agent.runner`.

Protocol with the parent (serverflow_agent.executor): one JSON object on stdin
`{"handler": "module:function", "params": {...}, "memory_limit_mb": N,
"limit_children": bool}`, one JSON object on stdout `{"ok": true, "output": ...}` or
`{"ok": false, "error": "..."}`. Exit status EXIT_MEMORY means the memory limit was hit.
The handler never sees the real stdout: what it (or anything it spawns) prints goes to
stderr, so it cannot forge the answer. Progress lines go to a separate pipe
(serverflow_agent.progress).

Kept to the standard library and imported before the rlimit is set, so it stays small.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
from typing import Any

from serverflow_agent import progress

EXIT_OK = 0
EXIT_BAD_REQUEST = 2
EXIT_MEMORY = 86
MIB = 1024 * 1024
MAX_REQUEST_BYTES = 2 * 1024 * 1024


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _load(handler: str) -> Any:
    module_name, _, function_name = handler.partition(":")
    module = importlib.import_module(module_name)
    function = module
    for part in function_name.split("."):
        function = getattr(function, part)
    if not callable(function):
        raise TypeError(f"{handler} is not callable")
    return function


def main() -> int:
    answer_fd = os.dup(1)  # os.dup gives a non-inheritable fd: grandchildren never get it
    os.dup2(2, 1)
    progress.attach_from_environment()
    try:
        request = json.loads(sys.stdin.buffer.read(MAX_REQUEST_BYTES))
        handler = request["handler"]
        params = request["params"]
        limit_mb = request.get("memory_limit_mb")
        limit_children = request.get("limit_children", True) is not False
        if not isinstance(handler, str) or not isinstance(params, dict):
            raise TypeError("handler must be a string and params an object")
    except (ValueError, KeyError, TypeError) as exc:
        print(f"serverflow-agent runner: bad request: {exc}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    try:
        if isinstance(limit_mb, int) and limit_mb > 0:
            _limit_memory(limit_mb * MIB, limit_children)
        function = _load(handler)
        output = function(params)
        try:
            answer = json.dumps({"ok": True, "output": output}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            answer = json.dumps({"ok": False, "error": f"output is not JSON: {exc}"})
    except MemoryError:
        output = None
        _memory_exit(limit_mb)
    except Exception as exc:  # noqa: BLE001 - any failure of the action is its result
        answer = json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    progress.flush(timeout=2.0)  # the last lines go out before the answer
    try:
        _write(answer_fd, answer.encode())
    except MemoryError:
        _memory_exit(limit_mb)
    return EXIT_OK


def _limit_memory(limit: int, limit_children: bool) -> None:
    if limit_children:
        # Soft and hard: the action, and everything it starts, stays under the limit.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        return
    # Soft only: serverflow_agent.spawn raises it back to the hard limit for the programs
    # the action starts (a PM2 daemon must not inherit it).
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _memory_exit(limit_mb: Any) -> None:
    try:
        os.write(2, f"MemoryError: memory limit of {limit_mb} MiB reached\n".encode())
    finally:
        os._exit(EXIT_MEMORY)


if __name__ == "__main__":
    try:
        code = main()
    except MemoryError:
        os._exit(EXIT_MEMORY)
    sys.stdout.flush()
    sys.exit(code)
