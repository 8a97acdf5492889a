"""Host metrics for heartbeats and the `system.metrics` action, via psutil.

Every call here reads a few /proc files; nothing blocks or samples over an interval, so a
heartbeat costs well under a millisecond of CPU.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil


def _percent(value: float) -> float:
    return round(float(value), 1)


def collect(process: psutil.Process | None = None, disk_path: str = "/") -> dict[str, Any]:
    """CPU, load, memory, disk, network, uptime, and the agent's own RSS."""
    load1, load5, load15 = os.getloadavg()
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    net = psutil.net_io_counters()
    me = process or psutil.Process()
    return {
        # Non-blocking: the CPU share since the previous call (0.0 on the very first one).
        "cpu_percent": _percent(psutil.cpu_percent(interval=None)),
        "cpu_count": psutil.cpu_count() or 0,
        "load1": round(load1, 2),
        "load5": round(load5, 2),
        "load15": round(load15, 2),
        "memory": {"total": memory.total, "used": memory.used, "percent": _percent(memory.percent)},
        "disk": {
            "path": disk_path,
            "total": disk.total,
            "used": disk.used,
            "percent": _percent(disk.percent),
        },
        "net": {
            "bytes_sent": net.bytes_sent if net else 0,
            "bytes_recv": net.bytes_recv if net else 0,
        },
        "uptime_s": int(time.time() - psutil.boot_time()),
        "agent_rss": me.memory_info().rss,
    }
