"""How many agents one control plane holds, and how fast commands fan out.

    .venv/bin/python bench/agents.py --agents 1000

Starts a real control plane (`serverflow up`, SQLite) and N simulated agents (real
protocol, real Ed25519 signatures, bench/simagent.py) spread over worker processes, then
measures: time for N agents to connect and authorize; command round-trip latency p50/p99
for a fan-out to 1, 100 and N agents; control-plane RSS and CPU per agent; and a real
`serverflow-agent` process's idle RSS and CPU, and one read action's round trip through
the REST API to it. Prints each figure beside its target; the
last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.simagent import SimAgent  # noqa: E402
from serverflow_contract import protocol  # noqa: E402
from serverflow_testkit.controlplane import Deployment, bootstrap  # noqa: E402
from serverflow_testkit.protocol_peer import register_agent  # noqa: E402

TARGETS = {
    "connected": ("agents connected", ">= N (1,000 at full size)"),
    "fanout_all_p99_ms": ("fan-out to all, p99", "< 250 ms"),
    "agent_idle_rss_mb": ("real agent idle RSS", "< 40 MB"),
    "agent_idle_cpu_percent": ("real agent idle CPU", "< 1 %"),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# -- worker processes holding the simulated agents ---------------------------------------


def _worker(specs: list[dict[str, str]], go: Any, stop: Any, report: Any) -> None:
    asyncio.run(_worker_main(specs, go, stop, report))


async def _worker_main(specs: list[dict[str, str]], go: Any, stop: Any, report: Any) -> None:
    import nacl.signing

    agents = [
        SimAgent(
            s["ws_url"],
            s["server_id"],
            s["org_id"],
            nacl.signing.SigningKey(protocol.b64d(s["seed"])),
            s["cp_key"],
        )
        for s in specs
    ]
    while not go.is_set():
        await asyncio.sleep(0.01)
    limit = asyncio.Semaphore(200)  # keep the listen backlog of the control plane happy

    async def bring_up(agent: SimAgent) -> None:
        async with limit:
            await agent.handshake()

    results = await asyncio.gather(*(bring_up(a) for a in agents), return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    report.put(
        {"authorized_at": time.time(), "ok": len(agents) - len(failures), "failures": failures[:3]}
    )
    tasks = [
        asyncio.create_task(a.serve())
        for a, r in zip(agents, results, strict=True)
        if not isinstance(r, BaseException)
    ]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


# -- the control plane side --------------------------------------------------------------


async def enroll(dep: Deployment, count: int, prefix: str) -> list[dict[str, str]]:
    return await enroll_at(dep.url, dep.tokens["owner"], count, prefix)


async def enroll_at(url: str, token: str, count: int, prefix: str) -> list[dict[str, str]]:
    """Create servers and register one key each, as `serverflow servers add` + install do."""
    sem = asyncio.Semaphore(32)
    headers = {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:

        async def one(i: int) -> dict[str, str]:
            async with sem:
                created = await http.post("/api/v1/servers", json={"name": f"{prefix}-{i}"})
                if created.status_code != 201:
                    raise SystemExit(f"creating server {prefix}-{i}: {created.text}")
                made = created.json()
                key = protocol.new_signing_key()
                answer = (
                    await http.post(
                        "/api/v1/agents/register",
                        json={
                            "token": made["install"]["token"],
                            "public_key": protocol.public_key_of(key),
                            "hostname": f"{prefix}-{i}",
                            "agent_version": "sim",
                        },
                    )
                ).json()
                return {
                    "ws_url": answer["ws_url"],
                    "server_id": answer["server_id"],
                    "org_id": answer["org_id"],
                    "cp_key": answer["control_plane_key"],
                    "seed": protocol.b64e(bytes(key)),
                }

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def fan_out(dep: Deployment, ids: list[str], rounds: int) -> dict[str, float]:
    latencies: list[float] = []
    walls: list[float] = []
    headers = {"Authorization": f"Bearer {dep.tokens['owner']}"}
    with httpx.Client(base_url=dep.url, headers=headers, timeout=300) as http:
        for _ in range(rounds):
            started = time.perf_counter()
            answer = http.post("/api/v1/actions/sim.echo", json={"servers": ids, "params": {}})
            walls.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
            commands = answer.json()["commands"]
            bad = [c for c in commands if c["status"] != "ok"]
            if bad:
                raise RuntimeError(f"{len(bad)} commands failed, e.g. {bad[0]}")
            latencies += [c["latency_ms"] for c in commands]
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "request_p50_ms": percentile(walls, 50),
    }


def real_agent(dep: Deployment, work: Path, idle_seconds: float, calls: int) -> dict[str, float]:
    """Install a real serverflow-agent, time `calls` read actions (system.info) through
    the REST API one after another, then let it sit idle and watch its RSS and CPU."""
    headers = {"Authorization": f"Bearer {dep.tokens['owner']}"}
    made = httpx.post(
        dep.url + "/api/v1/servers", json={"name": "real-agent"}, headers=headers, timeout=60
    ).json()
    state = work / "agent-state"
    agent_bin = Path(sys.executable).with_name("serverflow-agent")
    register_agent(dep.url, made["install"]["token"], state)
    log = open(work / "agent.log", "wb")
    process = subprocess.Popen(
        [str(agent_bin), "run", "--state-dir", str(state)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while (
            httpx.get(f"{dep.url}/api/v1/servers/{made['id']}", headers=headers, timeout=10).json()[
                "status"
            ]
            != "online"
        ):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the real agent did not come online")
            time.sleep(0.1)
        proc = psutil.Process(process.pid)
        walls = []
        with httpx.Client(base_url=dep.url, headers=headers, timeout=60) as http:
            for _ in range(calls):
                started = time.perf_counter()
                answer = http.post(
                    f"/api/v1/servers/{made['id']}/actions/system.info", json={"params": {}}
                )
                walls.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200 or answer.json()["status"] != "ok":
                    raise RuntimeError(f"system.info failed: {answer.text[:300]}")
        time.sleep(2)  # let start-up settle before measuring "idle"
        cpu0, wall0 = cpu_seconds(proc), time.monotonic()
        peak = 0
        while time.monotonic() - wall0 < idle_seconds:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(1)
        cpu = (cpu_seconds(proc) - cpu0) / (time.monotonic() - wall0) * 100
        return {
            "rss_mb": peak / 2**20,
            "cpu_percent": cpu,
            "command_p50_ms": percentile(walls, 50),
            "command_p99_ms": percentile(walls, 99),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument(
        "--workers",
        type=int,
        # The fleet is simulated on the control plane's own machine: leave it a core, as
        # real agents run elsewhere (on 2 cores, two workers made p50 ~190 ms instead of
        # ~150 ms, by starving the process being measured).
        default=max(1, (os.cpu_count() or 2) - 1),
        help="processes holding the simulated agents (default: one per core but one)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="fan-outs per size")
    parser.add_argument(
        "--calls", type=int, default=200, help="read actions timed on the real agent"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=60,
        help="how long to watch the idle control plane and the real agent",
    )
    args = parser.parse_args()
    n = args.agents
    figures: dict[str, Any] = {"agents": n, "workers": args.workers}

    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        work = Path(tmp)
        # Enrolling N servers is N API calls from one token: lift the per-token limit.
        dep = bootstrap(work / "data", env={"SERVERFLOW_API_RATE_PER_MINUTE": "1000000"})
        try:
            cp = psutil.Process(dep.cp.process.pid)  # type: ignore[union-attr]
            started = time.perf_counter()
            specs = asyncio.run(enroll(dep, n, "sim"))
            figures["enroll_seconds"] = time.perf_counter() - started
            rss_before = cp.memory_info().rss

            ctx = mp.get_context("spawn")
            go, stop, report = ctx.Event(), ctx.Event(), ctx.Queue()
            chunks = [specs[i :: args.workers] for i in range(args.workers)]
            workers = [
                ctx.Process(target=_worker, args=(chunk, go, stop, report))
                for chunk in chunks
                if chunk
            ]
            for w in workers:
                w.start()
            time.sleep(3)  # workers import and build their agents before the clock starts
            t0 = time.time()
            go.set()
            reports = [report.get(timeout=600) for _ in workers]
            figures["connected"] = sum(r["ok"] for r in reports)
            figures["connect_seconds"] = max(r["authorized_at"] for r in reports) - t0
            failures = [f for r in reports for f in r["failures"]]
            if failures:
                print("connection failures, e.g.:", failures[:3], file=sys.stderr)

            time.sleep(2)
            rss_after = cp.memory_info().rss
            figures["cp_rss_mb"] = rss_after / 2**20
            figures["cp_rss_per_agent_kb"] = (rss_after - rss_before) / max(1, n) / 1024
            window = min(args.idle_seconds, 10)
            cpu0, wall0 = cpu_seconds(cp), time.monotonic()
            time.sleep(window)
            cpu = (cpu_seconds(cp) - cpu0) / (time.monotonic() - wall0) * 100
            figures["cp_idle_cpu_percent"] = cpu
            figures["cp_cpu_per_agent_percent"] = cpu / max(1, n)

            ids = [s["server_id"] for s in specs]
            for label, size in (("1", 1), ("100", 100), ("all", n)):
                if size > n:
                    continue
                result = fan_out(dep, ids[:size], args.rounds)
                figures[f"fanout_{label}_p50_ms"] = result["p50_ms"]
                figures[f"fanout_{label}_p99_ms"] = result["p99_ms"]
                figures[f"fanout_{label}_request_ms"] = result["request_p50_ms"]

            stop.set()
            for w in workers:
                w.join(timeout=30)
            agent = real_agent(dep, work, args.idle_seconds, args.calls)
            figures["real_command_p50_ms"] = agent["command_p50_ms"]
            figures["real_command_p99_ms"] = agent["command_p99_ms"]
            figures["agent_idle_rss_mb"] = agent["rss_mb"]
            figures["agent_idle_cpu_percent"] = agent["cpu_percent"]
        finally:
            dep.cp.stop()

    rows = [
        (
            "agents connected and authorized",
            f"{figures['connected']} / {n} ({args.workers} worker processes)",
            "1,000 agents",
        ),
        ("time to connect and authorize", f"{figures['connect_seconds']:.2f} s", "-"),
        (
            "fan-out to 1: p50 / p99",
            f"{figures.get('fanout_1_p50_ms', 0):.1f} / {figures.get('fanout_1_p99_ms', 0):.1f} ms",
            "-",
        ),
        (
            "fan-out to 100: p50 / p99",
            f"{figures.get('fanout_100_p50_ms', float('nan')):.1f} / "
            f"{figures.get('fanout_100_p99_ms', float('nan')):.1f} ms",
            "-",
        ),
        (
            f"fan-out to all {n}: p50 / p99",
            f"{figures['fanout_all_p50_ms']:.1f} / {figures['fanout_all_p99_ms']:.1f} ms",
            "p99 < 250 ms",
        ),
        (
            "control plane RSS (total, per agent)",
            f"{figures['cp_rss_mb']:.0f} MB, {figures['cp_rss_per_agent_kb']:.0f} KB",
            "-",
        ),
        (
            "control plane CPU with agents idle (total, per agent)",
            f"{figures['cp_idle_cpu_percent']:.1f} %, {figures['cp_cpu_per_agent_percent']:.4f} %",
            "-",
        ),
        (
            "real agent, one read action via the API: p50 / p99",
            f"{figures['real_command_p50_ms']:.1f} / {figures['real_command_p99_ms']:.1f} ms",
            "p50 < 10, p99 < 20 ms",
        ),
        ("real agent idle RSS", f"{figures['agent_idle_rss_mb']:.1f} MB", "< 40 MB"),
        ("real agent idle CPU", f"{figures['agent_idle_cpu_percent']:.2f} %", "< 1 %"),
    ]
    print_figures(rows, figures)
    return 0


def print_figures(rows: list[tuple[str, str, str]], figures: dict[str, Any]) -> None:
    """One line per row (name, value, target), then every figure as one JSON object."""
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>28}   {('target: ' + target) if target else ''}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the worker processes
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens in a log
    sys.exit(main())
