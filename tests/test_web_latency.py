"""bench/ui_latency.py runs end to end (a few events); the figures themselves are the
benchmark's business, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serverflow_testkit import missing
from serverflow_testkit.browser import CHROMIUM

ROOT = Path(__file__).resolve().parents[1]


def test_ui_latency_bench_runs() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing("playwright", "pip install playwright")
    if not CHROMIUM.exists():
        missing("chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ui_latency.py"), "--events", "10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["events"] == 10 and figures["received"] == 10 and figures["lost"] == 0
    assert figures["p50_ms"] > 0 and figures["p99_ms"] >= figures["p50_ms"]
    assert "target: p99 < 100 ms" in run.stdout
