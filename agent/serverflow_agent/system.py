"""Handlers of the built-in read actions. Each runs in the action runner subprocess,
takes the validated params and returns a JSON-able dict."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time
from typing import Any

import psutil

from serverflow_agent import __version__
from serverflow_agent import metrics as host_metrics

SERVICE_PROPERTIES = (
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "ExecMainStatus",
    "ActiveEnterTimestamp",
    "NRestarts",
)


def _os_release() -> dict[str, str]:
    data: dict[str, str] = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    data[key] = value.strip().strip('"')
    except OSError:
        pass
    return data


def info(params: dict[str, Any]) -> dict[str, Any]:
    release = _os_release()
    memory = psutil.virtual_memory()
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "os": uname.system,
        "distribution": release.get("PRETTY_NAME"),
        "kernel": uname.release,
        "architecture": uname.machine,
        "cpu_count": psutil.cpu_count() or 0,
        "memory_total": memory.total,
        "boot_time": int(psutil.boot_time()),
        "python": platform.python_version(),
        "agent_version": __version__,
    }


def metrics(params: dict[str, Any]) -> dict[str, Any]:
    # A fresh process has no previous CPU sample: take a short one.
    psutil.cpu_percent(interval=None)
    time.sleep(0.2)
    data = host_metrics.collect()
    data.pop("agent_rss", None)
    return data


def _usage(path: str) -> dict[str, Any]:
    usage = psutil.disk_usage(path)
    return {
        "path": path,
        "total": usage.total,
        "used": usage.used,
        "free": usage.free,
        "percent": round(usage.percent, 1),
    }


def disk_usage(params: dict[str, Any]) -> dict[str, Any]:
    path = params.get("path")
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        return {"filesystems": [_usage(path)]}
    filesystems = []
    for part in psutil.disk_partitions(all=False):
        try:
            entry = _usage(part.mountpoint)
        except OSError:
            continue
        entry.update(device=part.device, fstype=part.fstype)
        filesystems.append(entry)
    return {"filesystems": filesystems}


def top_processes(params: dict[str, Any]) -> dict[str, Any]:
    limit = int(params.get("limit", 10))
    sort_by = params.get("sort_by", "cpu")
    procs = list(psutil.process_iter(["pid", "name", "username"]))
    for proc in procs:
        try:
            proc.cpu_percent(None)  # start the sample
        except psutil.Error:
            pass
    time.sleep(0.5)
    rows = []
    for proc in procs:
        try:
            with proc.oneshot():
                rows.append(
                    {
                        "pid": proc.pid,
                        # Names only: command lines can hold secrets.
                        "name": proc.info["name"],
                        "user": proc.info["username"],
                        "cpu_percent": round(proc.cpu_percent(None), 1),
                        "rss": proc.memory_info().rss,
                        "memory_percent": round(proc.memory_percent(), 2),
                    }
                )
        except psutil.Error:
            continue
    key = "cpu_percent" if sort_by == "cpu" else "rss"
    rows.sort(key=lambda row: row[key], reverse=True)
    return {"sort_by": sort_by, "processes": rows[:limit]}


def service_status(params: dict[str, Any]) -> dict[str, Any]:
    name = params["name"]
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise RuntimeError("systemctl is not available on this server (no systemd)")
    proc = subprocess.run(
        [systemctl, "show", "--no-pager", f"--property={','.join(SERVICE_PROPERTIES)}", "--", name],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "SYSTEMD_PAGER": ""},
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip() or proc.stdout.strip() or "no output")[-500:]
        raise RuntimeError(f"systemctl show {name} failed: {reason}")
    properties = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            properties[key] = value
    return {"name": name, "properties": properties}
