"""The benchmarks run (at a small size) and print the figures they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_agents_bench_small() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "agents.py"),
            "--agents",
            "12",
            "--rounds",
            "2",
            "--idle-seconds",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["connected"] == 12
    for key in (
        "connect_seconds",
        "fanout_1_p99_ms",
        "fanout_all_p99_ms",
        "cp_rss_mb",
        "cp_cpu_per_agent_percent",
        "agent_idle_rss_mb",
        "agent_idle_cpu_percent",
    ):
        assert isinstance(figures[key], int | float), key
    assert "target: p99 < 250 ms" in proc.stdout and "target: < 40 MB" in proc.stdout


@pytest.mark.postgres
def test_scale_bench_small() -> None:
    """Two instances, a small fleet, one instance killed: every agent ends up on the other."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--agents", "20", "--rounds", "1",
         "--calls", "5", "--idle-seconds", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["agents"] == 20 and sum(figures["agents_per_instance"]) == 20
    assert figures["held_by_survivors"] == 20, figures
    assert figures["fanout_all_failed"] == 0, figures
    for key in ("connect_seconds", "fanout_all_p99_ms", "command_cross_p99_ms", "storm_seconds"):
        assert isinstance(figures[key], int | float), key
    assert "target: p99 < 250 ms at 1,000" in proc.stdout
