"""The served agent installer as a new user meets it: the printed line, run as root on a
host without sudo whose PID 1 is not systemd (though `systemctl` is on PATH), twice;
then as a normal user; its --help and its errors.

The "host" is a PID and mount namespace (`serverflow_testkit.agent_install.Host`) whose
PID 1 is a plain shell, so the agent started in the background outlives the installer as
it would on a server. The default bin dir /usr/local/bin is an empty tmpfs in there, so
the default link is tested and nothing reaches the machine's own; the prefix and the
state dir are temp dirs: a non-default state dir is what `serverflow-agent status` got
wrong, and /opt cannot be hidden by a tmpfs (this machine's wheelhouse for pip is there).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from serverflow_testkit import wait_for
from serverflow_testkit.agent_install import (
    Host,
    agent_processes,
    install_script,
    namespace_pid,
    new_install,
    new_server,
)
from serverflow_testkit.controlplane import Deployment, bootstrap

REPO = Path(__file__).resolve().parents[1]
# Commands a root install must never need, recording any call: sudo (a root shell may not
# have it) and systemctl (present, but systemd is not PID 1 here).
# systemctl answers like a host where the unit is not active yet.
RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
[ "$1" = is-active ] && exit 3
exit 0
"""
OPTIONS = [
    "--token",
    "--systemd",
    "--no-systemd",
    "--prefix",
    "--state-dir",
    "--bin-dir",
    "--python",
    "--ca-file",
    "--pip-args",
    "--reinstall",
    "--help",
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = bootstrap(tmp_path_factory.mktemp("cp") / "data")
    yield dep
    dep.cp.stop()


@pytest.fixture(scope="module")
def script(deployment: Deployment) -> str:
    return install_script(deployment)


def fake_bin(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text(RECORDER.format(log=folder / "calls.log"))
        path.chmod(0o755)
    return folder


def server_status(dep: Deployment, server_id: str) -> dict[str, Any]:
    with dep.http() as http:
        return dict(http.get(f"/servers/{server_id}").json())


def test_root_without_sudo_or_systemd_twice(deployment: Deployment, tmp_path: Path) -> None:
    prefix, state = tmp_path / "opt", tmp_path / "state"
    fakes = fake_bin(tmp_path / "fakebin", "sudo", "systemctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERFLOW_")}
    env["PATH"] = f"{fakes}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    server = new_server(deployment, "fresh-1")
    install = server["install"]
    extra = ["--prefix", str(prefix), "--state-dir", str(state), "--python", sys.executable]

    with Host(tmpfs=["/usr/local/bin"]) as host:

        def install_with(
            command: str, calls: bool = False
        ) -> tuple[subprocess.CompletedProcess[str], float]:
            # The printed line, word for word, plus this test's directories.
            assert command.startswith("curl -fsSL ") and "sudo" not in command, command
            started = time.monotonic()
            done = host.run(["bash", "-c", f"{command} {shlex.join(extra)}"], env=env)
            took = time.monotonic() - started
            assert done.returncode == 0, done.stdout + done.stderr
            if not calls:
                assert not (fakes / "calls.log").exists(), (fakes / "calls.log").read_text()
            return done, took

        def one_agent() -> psutil.Process:
            running = agent_processes(state)
            assert len(running) == 1, running
            (agent,) = running
            assert namespace_pid(agent) == int((state / "agent.pid").read_text())
            assert agent.ppid() == host.pid1  # it outlived the installer
            return agent

        def agent_status(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
            # From PATH (the default bin dir), without --state-dir.
            return host.run(["serverflow-agent", "status", *args], env={**env, **extra_env})

        def registered() -> dict[str, Any]:
            with deployment.http() as http:
                servers = http.get("/servers").json()["servers"]
            mine = [s for s in servers if s["name"] == "fresh-1"]
            assert len(mine) == 1, servers
            wait_for(
                lambda: server_status(deployment, server["id"])["status"] == "online",
                60,
                "the agent online",
            )
            status = agent_status("--json")
            assert status.returncode == 0, status.stderr
            data = json.loads(status.stdout)
            assert data["server_id"] == server["id"] and data["state_dir"] == str(state)
            return {**server_status(deployment, server["id"]), **data}

        first, first_s = install_with(install["command"])
        out = first.stdout
        assert "Starting the agent in the background (systemd is not running" in out, out
        assert "NOT started again after a reboot" in out
        assert "Linked /usr/local/bin/serverflow-agent" in out
        agent1 = one_agent()
        agent1_pid = namespace_pid(agent1)
        before = registered()
        text = agent_status()
        assert text.returncode == 0 and server["id"] in text.stdout, text.stderr
        assert install["token"] not in (state / "agent.log").read_text()

        # Again, with a new token: one agent, re-registered, nothing downloaded again.
        again = new_install(deployment, server["id"])
        second, second_s = install_with(again["command"])
        out = second.stdout
        assert f"Stopping the previous agent (pid {agent1_pid})" in out, out
        assert "The agent is up to date" in out and "Downloading" not in out, out
        assert not agent1.is_running() or agent1.status() == psutil.STATUS_ZOMBIE
        agent2 = one_agent()
        assert agent2.pid != agent1.pid
        after = registered()
        assert after["agent_key_id"] != before["agent_key_id"]
        assert after["registered_at"] > before["registered_at"]
        print(f"\ninstall: first run {first_s:.1f} s, second run {second_s:.1f} s")

        # A spent token: nothing changes, and the agent that was stopped runs again.
        spent = host.run(["bash", "-c", f"{install['command']} {shlex.join(extra)}"], env=env)
        assert spent.returncode == 1, spent.stdout + spent.stderr
        assert "registration failed" in spent.stderr and "runs again" in spent.stdout
        agent2 = one_agent()
        agent2_pid = namespace_pid(agent2)
        assert registered()["agent_key_id"] == after["agent_key_id"]

        # The state dir's precedence: --state-dir, then the environment, then the record.
        elsewhere = tmp_path / "elsewhere"
        by_env = agent_status(SERVERFLOW_AGENT_STATE_DIR=str(elsewhere))
        assert by_env.returncode == 1 and str(elsewhere) in by_env.stderr
        by_option = agent_status(
            "--json", "--state-dir", str(state), SERVERFLOW_AGENT_STATE_DIR=str(elsewhere)
        )
        assert json.loads(by_option.stdout)["server_id"] == server["id"]

        # The same host once systemd runs (as sd_booted sees it; systemctl is a recorder):
        # the unit replaces the background agent. Only tmpfs mounts are written to.
        if not Path("/etc/systemd/system").is_dir():
            print("no /etc/systemd/system on this machine: the systemd run is left out")
            return
        if "/run/systemd" not in host.mounts:
            host.sh("mount -t tmpfs tmpfs /run")
        host.sh("mkdir -p /run/systemd/system && mount -t tmpfs tmpfs /etc/systemd/system")
        if Path("/etc/nginx/conf.d").is_dir():
            host.sh("mount -t tmpfs tmpfs /etc/nginx/conf.d")
        third, _ = install_with(new_install(deployment, server["id"])["command"], calls=True)
        assert f"Stopping the previous agent (pid {agent2_pid})" in third.stdout
        assert agent_processes(state) == []  # systemctl is a recorder here: it starts none
        calls = (fakes / "calls.log").read_text().splitlines()
        assert calls == [
            "systemctl is-active --quiet serverflow-agent.service",
            "systemctl daemon-reload",
            "systemctl enable --quiet serverflow-agent.service",
            "systemctl restart serverflow-agent.service",
        ], calls
        if Path("/etc/nginx/conf.d").is_dir():
            include = host.sh("cat /etc/nginx/conf.d/serverflow.conf")
            assert include == "include /etc/nginx/conf.d/serverflow/*.conf;\n"
        unit = host.sh("cat /etc/systemd/system/serverflow-agent.service")
        assert f'ExecStart="{prefix}/venv/bin/serverflow-agent" run --state-dir "{state}"' in unit


def test_forced_systemd_without_systemd(deployment: Deployment, tmp_path: Path) -> None:
    """--systemd on a host whose PID 1 is not systemd (systemctl on PATH): a clear error."""
    fakes = fake_bin(tmp_path / "fakebin", "systemctl")
    env = {"PATH": f"{fakes}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    prefix = tmp_path / "opt"
    with Host() as host:
        done = host.run(
            ["bash", "-s", "--", "--token", "sfi_x", "--systemd", "--prefix", str(prefix)],
            env=env,
            input=install_script(deployment),
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--systemd: systemd is not running on this host (PID 1 is bash)" in done.stderr
    assert "rerun without --systemd" in done.stderr
    assert not prefix.exists() and not (fakes / "calls.log").exists()


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A folder user nobody can use (pytest's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="sf-install-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def as_nobody(script: str, args: list[str], path: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is not on PATH"
    return subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/bash",
            "-s",
            "--",
            *args,
        ],
        input=script,
        env={"PATH": path, "HOME": "/"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def test_a_normal_user_goes_through_sudo(script: str, nobody_dir: Path) -> None:
    sudo = nobody_dir / "sudo"
    sudo.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {nobody_dir}/args\ncat > {nobody_dir}/stdin\nexit 7\n'
    )
    sudo.chmod(0o755)
    args = ["--token", "sfi_t", "--pip-args", "--index-url http://mirror.test/simple"]
    done = as_nobody(script, args, f"{nobody_dir}:/usr/bin:/bin")
    assert "running the installer again through sudo" in done.stdout, done.stderr
    assert done.returncode == 7  # sudo's answer is the installer's
    assert (nobody_dir / "args").read_text().splitlines() == ["bash", "-s", "--", *args]
    assert (nobody_dir / "stdin").read_text() == script  # itself, downloaded again


def test_a_normal_user_without_sudo_is_told_what_to_run(
    script: str, deployment: Deployment, nobody_dir: Path
) -> None:
    args = ["--token", "sfi_t", "--state-dir", "/srv/agent state"]
    done = as_nobody(script, args, str(nobody_dir))  # no sudo, no anything
    assert done.returncode == 1
    assert "must run as root, and sudo is not installed" in done.stderr, done.stderr
    command = done.stderr.strip().splitlines()[-1].strip()
    assert command == (
        f"curl -fsSL {deployment.url}/install.sh | bash -s -- --token sfi_t "
        r"--state-dir /srv/agent\ state"
    )


def test_help_lists_every_option_with_its_default(script: str) -> None:
    done = subprocess.run(
        ["bash", "-s", "--", "--help"], input=script, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stderr == ""
    options = done.stdout.split("Options (default in brackets):\n")[1]
    # One block per option: its line and the indented lines under it.
    blocks = dict(re.findall(r"^  (?:-h, )?(--[a-z-]+)(.*(?:\n {6,}.*)*)", options, re.M))
    assert list(blocks) == OPTIONS
    for name, block in blocks.items():
        if name != "--help":
            assert re.search(r"\[[^]]+\]", block), (name, block)
    # agent/README.md's table documents the same options and the same defaults.
    readme = (REPO / "agent" / "README.md").read_text()
    for name in OPTIONS:
        assert f"| `{name}" in readme, name
    for default in re.findall(r"\[(/[^]]+)\]", options):
        assert f"`{default}`" in readme, default


def test_unknown_option_exits_2(script: str) -> None:
    done = subprocess.run(
        ["bash", "-s", "--", "--token", "sfi_t", "--no-such-thing"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "error: unknown option '--no-such-thing' (see --help)"
