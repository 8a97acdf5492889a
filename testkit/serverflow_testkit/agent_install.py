"""Running the control plane's served agent installer (/install.sh) as a user would.

`new_server` and `install_script` talk to a running control plane (a `Deployment`);
`Host` is a PID and mount namespace that stands in for a fresh server whose PID 1 is a
plain long-lived shell, not systemd: the agent the installer starts in the background
outlives the installer (orphans are reparented to that shell, which reaps them), tmpfs
mounts keep what the installer writes to system paths (/usr/local/bin...) inside, and
killing the shell ends every process started in it.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from serverflow_testkit import missing
from serverflow_testkit.controlplane import Deployment


def new_server(dep: Deployment, name: str) -> dict[str, Any]:
    """POST /servers: the server, with `install` (token, expiry and the printed command)."""
    with dep.http() as http:
        made = http.post("/servers", json={"name": name})
    assert made.status_code == 201, made.text
    return dict(made.json())


def new_install(dep: Deployment, server_id: str) -> dict[str, Any]:
    """POST /servers/{id}/install-token: a new token and command, to install again."""
    with dep.http() as http:
        made = http.post(f"/servers/{server_id}/install-token")
    assert made.status_code == 201, made.text
    return dict(made.json())


def install_script(dep: Deployment) -> str:
    verify: Any = ssl.create_default_context(cafile=dep.cp.ca_file) if dep.cp.ca_file else True
    served = httpx.get(dep.url + "/install.sh", verify=verify, timeout=60)
    assert served.status_code == 200, served.text
    return served.text


def agent_processes(state_dir: Path) -> list[psutil.Process]:
    """Live `serverflow-agent run` processes for `state_dir`, in any namespace."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            proc.info["status"] != psutil.STATUS_ZOMBIE
            and any(arg.endswith("serverflow-agent") for arg in cmdline)
            and "run" in cmdline
            and str(state_dir) in cmdline
        ):
            found.append(proc)
    return found


def namespace_pid(proc: psutil.Process) -> int:
    """The pid `proc` has in its own (innermost) PID namespace, as a pidfile there holds."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {proc.pid}")


class Host:
    """A PID + mount namespace whose PID 1 is a shell; `tmpfs` paths get empty mounts."""

    def __init__(self, tmpfs: Iterable[str] = ()) -> None:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            missing("unshare/nsenter (util-linux)", "not on PATH")
        if os.geteuid() != 0:
            missing("a PID and mount namespace", "creating one needs root")
        mounts = [p for p in tmpfs if Path(p).is_dir()]
        # /run/systemd/system is how the installer (like sd_booted) knows systemd runs;
        # a host that has it must not make this one look like a systemd host.
        if Path("/run/systemd").is_dir():
            mounts.append("/run/systemd")
        self.mounts = mounts
        setup = "".join(f"mount -t tmpfs -o mode=0755 tmpfs '{p}' && " for p in mounts)
        # PID 1 of the namespace: a shell that lives until killed and reaps orphans.
        script = setup + "echo ready && while :; do sleep 1; done"
        self.process = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--mount",
                "--propagation",
                "private",
                "bash",
                "-c",
                script,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            _, error = self.process.communicate(timeout=10)
            missing("a PID and mount namespace", f"unshare failed: {error.strip()}")
        self.pid1 = self._namespace_init()

    def _namespace_init(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = psutil.Process(self.process.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.02)
        raise AssertionError("unshare started no PID 1")

    def run(
        self,
        command: list[str],
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` inside (its children stay there when it exits)."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid1}", "--pid", "--mount", "--", *command],
            env=dict(env) if env is not None else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )

    def sh(self, script: str) -> str:
        done = self.run(["bash", "-euc", script])
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def close(self) -> None:
        """SIGKILL to a namespace's PID 1 kills every process in the namespace."""
        try:
            os.kill(self.pid1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
