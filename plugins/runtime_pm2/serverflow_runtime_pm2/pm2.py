"""The PM2 runtime on the agent: drives the real `pm2` binary with a private PM2_HOME.

Each release process is described by a JSON ecosystem file (script = absolute argv[0],
args = the rest, interpreter "none": PM2 spawns it directly, no shell) and runs with
autorestart. Its stdout and stderr go to one file of JSON records (`log_type: json`: each
chunk of output with its stream and time), which `app.logs` reads. The pm2 CLI gets a
minimal environment, because PM2 copies the CLI's environment into every app it starts.
Every pm2 call goes through plugin_api.capture, so the PM2 daemon (which the first call
starts) never inherits an action's memory limit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from serverflow_agent import plugin_api
from serverflow_contract.runtime import (
    LogFile,
    LogFormat,
    ProcessInfo,
    ReleaseProcess,
    RuntimeFailure,
)

PM2_TIMEOUT_S = 60.0
MAX_LOG_LINE = 2000


class Pm2Error(RuntimeFailure):
    pass


def parse_jlist(output: str) -> list[dict[str, Any]]:
    """The process list from `pm2 jlist` output.

    A fresh PM2_HOME makes pm2 print a banner and "[PM2] Spawning PM2 daemon" lines
    (with colour codes) before the JSON, so take the line that decodes as a JSON array.
    """
    decoder = json.JSONDecoder()
    for line in reversed(output.splitlines()):
        text = line.strip()
        if not text.startswith("["):
            continue
        try:
            value, end = decoder.raw_decode(text)
        except ValueError:
            continue
        if isinstance(value, list) and not text[end:].strip():
            return [p for p in value if isinstance(p, dict)]
    raise Pm2Error(f"pm2 jlist printed no process list: {output.strip()[-300:]!r}")


def _info(proc: dict[str, Any]) -> ProcessInfo:
    env = proc.get("pm2_env") or {}
    monit = proc.get("monit") or {}
    pid = proc.get("pid")
    return ProcessInfo(
        name=str(proc.get("name")),
        status=str(env.get("status", "unknown")),
        pid=pid if isinstance(pid, int) and pid > 0 else None,
        restarts=int(env.get("restart_time") or 0),
        memory=monit.get("memory"),
        cpu=monit.get("cpu"),
    )


class Pm2Runtime:
    name = "pm2"

    def __init__(self, home: Path, binary: str = "pm2") -> None:
        self.home = Path(home)
        self.binary = binary

    # -- files ---------------------------------------------------------------------------

    @property
    def _files(self) -> Path:
        return self.home / "serverflow"

    def ecosystem_path(self, name: str) -> Path:
        return self._files / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self._files / "logs" / f"{name}.jsonl"

    def _text_log_path(self, name: str) -> Path:
        """Where processes started before logs were JSON records wrote (plain text)."""
        return self._files / "logs" / f"{name}.log"

    # -- the pm2 binary ------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = plugin_api.base_env()
        env["PM2_HOME"] = str(self.home)
        return env

    def _pm2(self, *args: str) -> str:
        try:
            result = plugin_api.capture(
                [self.binary, *args], env=self._env(), timeout=PM2_TIMEOUT_S
            )
        except plugin_api.CommandNotFound as exc:
            raise Pm2Error("pm2 is not installed on this server (npm install -g pm2)") from exc
        except plugin_api.CommandTimeout as exc:
            raise Pm2Error(f"pm2 {args[0]} did not answer within {PM2_TIMEOUT_S:g} s") from exc
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[-500:]
            raise Pm2Error(f"pm2 {args[0]} failed: {detail}")
        return result.stdout

    def daemon_running(self) -> bool:
        try:
            pid = int((self.home / "pm2.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def jlist(self) -> list[dict[str, Any]]:
        # Asking a stopped PM2 for its list would start a daemon just to hear "nothing".
        if not self.daemon_running():
            return []
        return parse_jlist(self._pm2("jlist"))

    # -- Runtime -------------------------------------------------------------------------

    def start(self, process: ReleaseProcess) -> None:
        if not process.argv or not os.path.isabs(process.argv[0]):
            raise Pm2Error(f"{process.name}: the program must be an absolute path")
        if self.exists(process.name):
            self._pm2("delete", process.name)
        (self._files / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
        log = str(self.log_path(process.name))
        app = {
            "name": process.name,
            "script": process.argv[0],
            "args": list(process.argv[1:]),
            "interpreter": "none",
            "cwd": str(process.cwd),
            "env": dict(process.env),
            "autorestart": True,
            "exp_backoff_restart_delay": 100,
            "kill_timeout": 5000,
            "treekill": True,
            "out_file": log,
            "error_file": log,
            "merge_logs": True,
            "log_type": "json",
            "vizion": False,
            "pmx": False,
            "automation": False,
        }
        path = self.ecosystem_path(process.name)
        # The file holds the app's environment (secrets): readable by root only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"apps": [app]}, f)
        self._pm2("start", str(path))
        if not self.exists(process.name):
            raise Pm2Error(f"pm2 did not start {process.name}")

    def exists(self, name: str) -> bool:
        return any(p.get("name") == name for p in self.jlist())

    def stop(self, name: str) -> None:
        self._pm2("stop", name)

    def restart(self, name: str) -> None:
        if not self.exists(name):
            raise Pm2Error(f"no PM2 process named {name}")
        self._pm2("restart", name)

    def delete(self, name: str) -> None:
        if self.exists(name):
            self._pm2("delete", name)
        self.ecosystem_path(name).unlink(missing_ok=True)
        self.log_path(name).unlink(missing_ok=True)
        self._text_log_path(name).unlink(missing_ok=True)

    def status(self, prefix: str = "") -> list[ProcessInfo]:
        return [_info(p) for p in self.jlist() if str(p.get("name", "")).startswith(prefix)]

    def logs(self, name: str, lines: int = 50) -> list[str]:
        found = [line for f in self.log_files(name) for line in plugin_api.tail_log(f, lines)[0]]
        found.sort(key=lambda line: line.at or 0)
        return [line.text[:MAX_LOG_LINE] for line in found[-lines:]]

    def log_files(self, name: str) -> list[LogFile]:
        # What start() told PM2 is in the ecosystem file: no need to ask the daemon.
        try:
            with open(self.ecosystem_path(name)) as f:
                apps = json.load(f).get("apps") or [{}]
        except (OSError, ValueError, AttributeError):
            apps = []
        if apps and isinstance(apps[0], dict) and apps[0].get("out_file"):
            app = apps[0]
            return _log_files(app["out_file"], app.get("error_file"), app.get("log_type"))
        for proc in self.jlist():  # a process started some other way
            env = proc.get("pm2_env") or {}
            if proc.get("name") == name and env.get("pm_out_log_path"):
                return _log_files(
                    env["pm_out_log_path"], env.get("pm_err_log_path"), env.get("log_type")
                )
        return []


def _log_files(out: str, err: str | None, log_type: Any) -> list[LogFile]:
    kind: LogFormat = "json" if log_type == "json" else "text"
    if not err or err == out:
        return [LogFile(Path(out), "out", kind)]
    return [LogFile(Path(out), "out", kind), LogFile(Path(err), "err", kind)]
