"""What the test actions do; runs in the agent's action runner subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _marker_dir():
    return os.path.realpath(os.environ["SERVERFLOW_TEST_MARKER_DIR"])


def touch(params):
    root = _marker_dir()
    path = os.path.realpath(os.path.join(root, params["path"]))
    if os.path.commonpath([root, path]) != root:
        raise ValueError("path must be under SERVERFLOW_TEST_MARKER_DIR")
    with open(path, "a"):
        pass
    return {"created": path, "state_dir": os.environ.get("SERVERFLOW_AGENT_STATE_DIR")}


def sleep(params):
    # A grandchild in the same process group: the timeout must kill it too.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.path.join(_marker_dir(), f"sleep-{os.getpid()}.json"), "w") as f:
        json.dump({"pid": os.getpid(), "child": child.pid}, f)
    time.sleep(params["seconds"])
    child.kill()
    return {"slept": params["seconds"]}


def allocate(params):
    block = bytearray(params["megabytes"] * 1024 * 1024)
    return {"allocated": len(block) // (1024 * 1024)}


def fail(params):
    raise RuntimeError(params.get("message", "boom"))


def echo(params):
    print("this goes to stderr, not into the answer")
    return {"value": params.get("value")}
