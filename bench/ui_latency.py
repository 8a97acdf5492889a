"""From an event on the control plane to the DOM update in a real browser.

    .venv/bin/python bench/ui_latency.py --events 200

Starts a real control plane (`serverflow up`, SQLite), one simulated agent speaking the
real protocol (bench/simagent.py: signed frames over the agent WebSocket), and Debian's
Chromium (Playwright) signed in on the overview page, which follows `/live`.

Method: the agent sends heartbeat i with a CPU figure no other heartbeat has (so the
overview's CPU cell must change for every one), one at a time. Just before sending, the
bench notes the wall-clock time; in the page, a MutationObserver on that cell notes
`performance.timeOrigin + performance.now()` when the text changes. Both clocks are this
machine's, but to be exact the offset between them is measured first: 30 round trips
asking the page for its time, keeping the one with the shortest round trip (offset =
browser time - midpoint of the trip, error <= half that trip). Latency = browser mark -
offset - send time: agent frame -> signature check -> event bus -> /live socket -> the
page's JavaScript -> DOM. Prints p50/p99 beside the target; the last line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nacl.signing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.agents import percentile  # noqa: E402
from bench.simagent import SimAgent, register  # noqa: E402
from serverflow_contract import protocol  # noqa: E402
from serverflow_testkit.browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD  # noqa: E402
from serverflow_testkit.controlplane import bootstrap, run_cli  # noqa: E402

TARGET_P99_MS = 100.0
WATCH = """(id) => {
    window.__marks = [];
    const cell = document.querySelector(
        `tr[data-server-id="${id}"] [data-metric="cpu"] [data-value]`);
    new MutationObserver(() => window.__marks.push(
        [cell.textContent, performance.timeOrigin + performance.now()])
    ).observe(cell, {subtree: true, childList: true, characterData: true});
}"""


async def clock_offset(page: Any, rounds: int = 30) -> tuple[float, float]:
    """Browser clock minus this process's clock (ms), and the round trip it was read in."""
    best: tuple[float, float] | None = None
    for _ in range(rounds):
        t0 = time.time() * 1000
        browser_now = await page.evaluate("() => performance.timeOrigin + performance.now()")
        t1 = time.time() * 1000
        trip = t1 - t0
        if best is None or trip < best[1]:
            best = (browser_now - (t0 + t1) / 2, trip)
    assert best is not None
    return best


def cpu_figure(i: int) -> float:
    return round(10 + (i % 800) / 10, 1)  # 10.0, 10.1, ... : each heartbeat differs


async def measure(url: str, email: str, agent: SimAgent, server_id: str, events: int) -> dict:
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import async_playwright

    home = Path(tempfile.mkdtemp(prefix="sf-bench-chromium-"))
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=env
            )
            page = await (await browser.new_context(locale="en-US")).new_page()
            await page.goto(url + "/login")
            await page.fill("#login-email", email)
            await page.fill("#login-password", PASSWORD)
            await page.click("form button[type=submit]")
            await page.wait_for_selector(f'tr[data-server-id="{server_id}"]')
            await page.wait_for_selector('#live-state[data-state="on"]')
            await page.evaluate(WATCH, server_id)
            offset, trip = await clock_offset(page)

            latencies: list[float] = []
            lost = 0
            for i in range(events):
                metrics = {
                    "cpu_percent": cpu_figure(i),
                    "memory": {"percent": 40.0},
                    "disk": {"percent": 60.0},
                }
                sent = time.time() * 1000
                await agent.heartbeat(metrics)
                try:
                    await page.wait_for_function(
                        f"() => window.__marks.length > {i - lost}", timeout=2000
                    )
                except PlaywrightTimeout:  # a lost update: counted, not measured
                    lost += 1
                    continue
                _text, marked = (await page.evaluate("() => window.__marks"))[i - lost]
                latencies.append(marked - offset - sent)
                await asyncio.sleep(0.02)
            await browser.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "events": events,
        "received": len(latencies),
        "lost": lost,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
        "clock_offset_ms": offset,
        "clock_trip_ms": trip,
        "target_p99_ms": TARGET_P99_MS,
    }


async def run(events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sf-bench-ui-") as tmp:
        dep = bootstrap(Path(tmp) / "data")
        try:
            email = "bench@acme.test"
            run_cli(
                "users", "create", email, "--org", "acme", "--role", "viewer",
                "--password-stdin", env=dep.cp.env, input=PASSWORD + "\n",
            )  # fmt: skip
            headers = {"Authorization": f"Bearer {dep.tokens['owner']}"}
            made = httpx.post(
                dep.url + "/api/v1/servers", json={"name": "sim-1"}, headers=headers, timeout=30
            ).json()
            key: nacl.signing.SigningKey = protocol.new_signing_key()
            answer = await asyncio.to_thread(register, dep.url, made["install"]["token"], key)
            agent = SimAgent(
                answer["ws_url"],
                answer["server_id"],
                answer["org_id"],
                key,
                answer["control_plane_key"],
            )
            await agent.handshake()
            await agent.heartbeat({"cpu_percent": 1.0})
            try:
                return await measure(dep.url, email, agent, made["id"], events)
            finally:
                await agent.close()
        finally:
            dep.cp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    figures = asyncio.run(run(args.events))
    print(f"events sent / shown in the page   {figures['events']} / {figures['received']}")
    print(
        f"event -> DOM latency p50 / p99     {figures['p50_ms']:.1f} / "
        f"{figures['p99_ms']:.1f} ms   target: p99 < {TARGET_P99_MS:.0f} ms"
    )
    print(
        f"clock offset browser - bench      {figures['clock_offset_ms']:.2f} ms "
        f"(read within {figures['clock_trip_ms']:.2f} ms)"
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the worker processes
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens in a log
    sys.exit(main())
