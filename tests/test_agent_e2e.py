"""The real agent, installed through the control plane's /install.sh, against the real
control plane: registration, signed commands, restarts, and TLS with a pinned key."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from serverflow_contract import protocol
from serverflow_testkit import wait_for
from serverflow_testkit.agent_install import install_script, new_server
from serverflow_testkit.controlplane import ControlPlaneProcess, Deployment, bootstrap
from serverflow_testkit.tls import CertificateAuthority


class Installed:
    """An agent installed by running the served install script with --no-systemd."""

    def __init__(self, dep: Deployment, work: Path, name: str, ca_file: Path | None = None):
        self.dep = dep
        self.server = new_server(dep, name)
        self.prefix, self.state = work / "opt", work / "state"
        script = install_script(dep)
        args = [
            "--token",
            self.server["install"]["token"],
            "--no-systemd",
            "--prefix",
            str(self.prefix),
            "--state-dir",
            str(self.state),
            "--bin-dir",  # not the machine's /usr/local/bin
            str(work / "bin"),
            "--python",
            sys.executable,
        ]
        if ca_file:
            args += ["--ca-file", str(ca_file)]
        self.install = subprocess.run(
            ["bash", "-s", "--", *args], input=script, text=True, capture_output=True, timeout=600
        )
        assert self.install.returncode == 0, self.install.stdout + self.install.stderr
        self.pid = int((self.state / "agent.pid").read_text())

    def status(self) -> str:
        with self.dep.http() as http:
            return str(http.get(f"/servers/{self.server['id']}").json()["status"])

    def log(self) -> str:
        return (self.state / "agent.log").read_text(errors="replace")

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
            psutil.Process(self.pid).wait(timeout=15)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        except psutil.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = bootstrap(tmp_path / "data")
    yield dep
    dep.cp.stop()


def test_install_register_command_restart(deployment: Deployment, tmp_path: Path) -> None:
    agent = Installed(deployment, tmp_path, "web-1")
    try:
        out = agent.install.stdout
        for step in ("Creating", "Installing the agent", "Registering", "Starting the agent"):
            assert step in out, out
        assert agent.server["install"]["token"] not in agent.log()
        wait_for(lambda: agent.status() == "online", what="the agent online")

        # The agent dials out and never listens.
        proc = psutil.Process(agent.pid)
        for p in [proc, *proc.children(recursive=True)]:
            listening = [c for c in p.net_connections(kind="inet") if c.status == "LISTEN"]
            assert listening == [], listening

        # A signed command through the CLI; its signed result is stored.
        ran = deployment.cli("run", "web-1", "system.info", "--json")
        result = json.loads(ran.stdout)
        assert result["status"] == "ok" and result["output"]["hostname"]
        db = sqlite3.connect(deployment.cp.data_dir / "serverflow.sqlite3")
        body, sig, key = db.execute(
            "SELECT c.result_body, c.result_signature, s.agent_public_key FROM commands c "
            "JOIN servers s ON s.id = c.server_id WHERE c.id = ?",
            (result["id"],),
        ).fetchone()
        protocol.verify(key, "result", protocol.loads(body), sig)
        listing = deployment.cli("servers", "list").stdout
        assert "web-1" in listing and "online" in listing

        # Control plane restarted: the agent comes back by itself.
        deployment.cp.stop()
        wait_for(lambda: not _answers(deployment.url), 30, "control plane down")
        deployment.cp.start()
        wait_for(lambda: agent.status() == "online", 90, "reconnected")
        again = deployment.cli("run", "web-1", "system.disk_usage", "--json")
        assert '"status": "ok"' in again.stdout
        assert agent.pid == psutil.Process(agent.pid).pid  # the same agent process
    finally:
        agent.stop()
    wait_for(lambda: agent.status() == "offline", 30, "offline after the agent stopped")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_tls_with_a_pinned_key(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    good, rogue = ca.issue("cp"), ca.issue("rogue")  # same trusted CA, different keys
    env = {"SERVERFLOW_TLS_CERTFILE": str(good.cert), "SERVERFLOW_TLS_KEYFILE": str(good.key)}
    dep = bootstrap(tmp_path / "data", env=env, ca_file=ca.cert)
    agent = None
    try:
        assert dep.url.startswith("https://")
        agent = Installed(dep, tmp_path, "secure-1", ca_file=ca.cert)
        config = json.loads((agent.state / "agent.json").read_text())
        assert config["ws_url"].startswith("wss://") and config["tls_pin"].startswith("sha256/")
        wait_for(lambda: agent.status() == "online", what="online over wss")

        # Someone with a certificate from the same CA impersonates the control plane.
        dep.cp.stop()
        impostor = ControlPlaneProcess(
            dep.cp.data_dir,
            ca_file=ca.cert,
            env={
                "SERVERFLOW_TLS_CERTFILE": str(rogue.cert),
                "SERVERFLOW_TLS_KEYFILE": str(rogue.key),
            },
        )
        impostor.port, impostor.url = dep.cp.port, dep.cp.url
        impostor.start()
        try:
            wait_for(lambda: "pin" in agent.log().lower(), 60, "the agent refusing the pin")
            assert agent.status() == "offline"
        finally:
            impostor.stop()
        dep.cp.start()
        wait_for(lambda: agent.status() == "online", 90, "back with the pinned certificate")
    finally:
        if agent is not None:
            agent.stop()
        dep.cp.stop()
