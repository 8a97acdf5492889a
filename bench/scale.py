"""Several control-plane instances behind nginx, a simulated fleet, and one instance killed.

    .venv/bin/python bench/scale.py                  # 2 instances, 2,000 agents
    .venv/bin/python bench/scale.py --agents 10000

Starts N `serverflow up` instances (default 2) on a fresh PostgreSQL database and a
private redis-server, nginx in front as the load balancer (round robin, WebSockets), and
a simulated fleet (bench/simagent.py: the real protocol and real Ed25519 signatures) in
worker processes of its own, whose agents reconnect as the real agent does (exponential
backoff with full jitter). Prints: the time for every agent to connect; each instance's
CPU with the fleet idle (heartbeats) and its RSS per agent; fan-out latency through
instance A's API to 1 / 100 / 1,000 / all agents, for agents A holds itself (the
single-instance path) and for agents another instance holds (routed through Redis);
single-command round trips through the API (same instance, cross-instance); then the
reconnect storm after SIGKILL of the last instance: the time until every agent is back
and the errors seen meanwhile. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.agents import cpu_seconds, enroll_at, percentile, print_figures  # noqa: E402
from bench.simagent import SimAgent  # noqa: E402
from serverflow_contract import protocol  # noqa: E402
from serverflow_testkit import free_port  # noqa: E402
from serverflow_testkit.cluster import (  # noqa: E402
    owner_token,
    start_instances,
    start_load_balancer,
)
from serverflow_testkit.nginx import world_readable_dir  # noqa: E402
from serverflow_testkit.postgres import app_database, start_postgres  # noqa: E402
from serverflow_testkit.redis import start_redis  # noqa: E402

BACKOFF_BASE_S, BACKOFF_CAP_S = 1.0, 60.0  # as serverflow_agent.client


# -- worker processes: agents that stay connected ----------------------------------------


def _worker(
    specs: list[dict[str, str]], go: Any, stop: Any, report: Any, index: int, mark: Any
) -> None:
    asyncio.run(_worker_main(specs, go, stop, report, index, mark))


async def _worker_main(
    specs: list[dict[str, str]], go: Any, stop: Any, report: Any, index: int, mark: Any
) -> None:
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
    # ever: agents authorized at least once; since_mark (reported): agents connected now
    # whose session began after the time the parent marked (the kill).
    state = {"connected": 0, "sessions": 0, "errors": 0, "last_error": "", "ever": 0}
    last_auth: dict[int, float] = {}
    live: set[int] = set()
    while not go.is_set():
        await asyncio.sleep(0.01)
    first = asyncio.Semaphore(200)  # the first connection only: the listen backlog

    async def keep(agent: SimAgent) -> None:
        attempt, gate = 0, first
        while not stop.is_set():
            try:
                if gate is not None:
                    async with gate:
                        await agent.handshake()
                else:
                    await agent.handshake()
                if gate is not None:
                    state["ever"] += 1
                gate = None
                state["connected"] += 1
                state["sessions"] += 1
                last_auth[id(agent)] = time.time()
                live.add(id(agent))
                attempt = 0
                try:
                    await agent.serve()
                finally:
                    state["connected"] -= 1
                    live.discard(id(agent))
            except Exception as exc:
                state["errors"] += 1
                state["last_error"] = repr(exc)[:200]
            finally:
                await agent.close()
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            attempt += 1
            await asyncio.sleep(delay)

    tasks = [asyncio.create_task(keep(a)) for a in agents]
    while not stop.is_set():
        since = sum(1 for a in live if last_auth[a] > mark.value) if mark.value else 0
        report.put({"worker": index, "at": time.time(), "since_mark": since, **state})
        await asyncio.sleep(0.25)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


COUNTS = ("connected", "sessions", "errors", "ever", "since_mark")


class Fleet:
    """The workers' latest reports."""

    def __init__(self, report: Any, workers: int) -> None:
        self.report = report
        self.latest: dict[int, dict[str, Any]] = {}
        self.workers = workers

    def poll(self) -> dict[str, Any]:
        while not self.report.empty():
            item = self.report.get_nowait()
            self.latest[item["worker"]] = item
        total: dict[str, Any] = {"last_error": ""}
        for key in COUNTS:
            total[key] = 0
        for item in self.latest.values():
            for key in COUNTS:
                total[key] += item[key]
            total["last_error"] = item["last_error"] or total["last_error"]
        return total

    def wait(self, check: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.poll()
            if len(self.latest) == self.workers and check(state):
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"fleet not there in {timeout:.0f} s: {state}")
            time.sleep(0.05)


# -- measurements --------------------------------------------------------------------------


def fan_out(url: str, token: str, ids: list[str], rounds: int) -> dict[str, float]:
    latencies: list[float] = []
    failed = 0
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
        for _ in range(rounds):
            answer = http.post("/api/v1/actions/sim.echo", json={"servers": ids, "params": {}})
            answer.raise_for_status()
            commands = answer.json()["commands"]
            bad = [c for c in commands if c["status"] != "ok"]
            if bad:  # counted and shown, not hidden in the percentiles
                failed += len(bad)
                print(f"  {len(bad)} of {len(commands)} failed, e.g. {bad[0]['message']}")
            latencies += [c["latency_ms"] for c in commands if c["status"] == "ok"]
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "failed": failed}


def round_trips(url: str, token: str, ids: list[str], calls: int) -> dict[str, float]:
    """One read action through the REST API, timed by the caller, `calls` times."""
    walls: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        for i in range(calls):
            server = ids[i % len(ids)]
            started = time.perf_counter()
            answer = http.post(f"/api/v1/servers/{server}/actions/sim.echo", json={"params": {}})
            walls.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200 or answer.json()["status"] != "ok":
                raise RuntimeError(f"a command failed: {answer.text[:300]}")
    return {"p50": percentile(walls, 50), "p99": percentile(walls, 99)}


def holders(client: redis.Redis, ids: list[str]) -> dict[str, str]:
    """server id -> the instance holding its agent, from the routing keys."""
    found = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        values = client.mget([f"serverflow:0:agent:{i}" for i in chunk])
        for server_id, value in zip(chunk, values, strict=True):
            if value is not None:
                found[server_id] = value.decode().partition("/")[0]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes holding the fleet")
    parser.add_argument("--rounds", type=int, default=5, help="fan-outs per size")
    parser.add_argument("--calls", type=int, default=200, help="single commands per kind")
    parser.add_argument("--idle-seconds", type=float, default=10)
    args = parser.parse_args()
    n, count = args.agents, args.instances
    if count < 2:
        parser.error("--instances: at least 2 (one is killed)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # every process started below
    figures: dict[str, Any] = {"agents": n, "instances": count, "workers": args.workers}

    pg = start_postgres()
    with tempfile.TemporaryDirectory(prefix="sf-scale-") as tmp, app_database(pg) as pg_url:
        work = Path(tmp)
        rd = start_redis(work / "redis")
        lb_port = free_port()
        env = {
            "SERVERFLOW_API_RATE_PER_MINUTE": "100000000",
            "SERVERFLOW_PUBLIC_URL": f"http://127.0.0.1:{lb_port}",
        }
        shared = {"SERVERFLOW_DATABASE_URL": pg_url, "SERVERFLOW_REDIS_URL": rd.url()}
        token = owner_token(work / "instance-0" / "data", {**shared, **env})
        instances = start_instances(work, pg_url, rd.url(), count, **env)
        lb = start_load_balancer(
            world_readable_dir("sf-scale-lb-"),
            instances,
            connections=4 * n + 256,
            port=lb_port,
            max_fails=0,
        )
        workers: list[Any] = []
        stop = mp.get_context("spawn").Event()
        try:
            ids_of = [httpx.get(cp.url + "/healthz").json()["instance"] for cp in instances]
            procs = [psutil.Process(cp.process.pid) for cp in instances]  # type: ignore[union-attr]
            print(f"instances {', '.join(ids_of)} behind nginx on :{lb_port}; enrolling {n}")
            started = time.perf_counter()
            specs = asyncio.run(enroll_at(lb.url, token, n, "sim"))
            figures["enroll_seconds"] = time.perf_counter() - started
            rss_before = [p.memory_info().rss for p in procs]

            ctx = mp.get_context("spawn")
            go, report, mark = ctx.Event(), ctx.Queue(), ctx.Value("d", 0.0)
            chunks = [specs[i :: args.workers] for i in range(args.workers)]
            workers = [
                ctx.Process(target=_worker, args=(chunk, go, stop, report, i, mark))
                for i, chunk in enumerate(chunks)
            ]
            for w in workers:
                w.start()
            time.sleep(3)  # workers import and build their agents before the clock starts
            fleet = Fleet(report, len(workers))
            t0 = time.monotonic()
            go.set()
            state = fleet.wait(lambda s: s["ever"] >= n, timeout=max(300, n / 5))
            figures["connect_seconds"] = time.monotonic() - t0
            figures["connect_errors"] = state["errors"]  # handshakes retried meanwhile
            print(f"{n} agents connected in {figures['connect_seconds']:.1f} s")

            time.sleep(2)
            settled = fleet.poll()
            client = redis.Redis.from_url(rd.url())
            ids = [s["server_id"] for s in specs]
            held = holders(client, ids)
            per = {i: [s for s in ids if held.get(s) == i] for i in ids_of}
            figures["agents_per_instance"] = [len(per[i]) for i in ids_of]
            rss_per_agent = []
            for proc, before, iid in zip(procs, rss_before, ids_of, strict=True):
                rss_per_agent.append((proc.memory_info().rss - before) / max(1, len(per[iid])))
            figures["rss_per_agent_kb"] = [round(r / 1024, 1) for r in rss_per_agent]
            cpu0 = [cpu_seconds(p) for p in procs]
            wall0 = time.monotonic()
            time.sleep(args.idle_seconds)
            wall = time.monotonic() - wall0
            figures["idle_cpu_percent"] = [
                round((cpu_seconds(p) - c) / wall * 100, 1)
                for p, c in zip(procs, cpu0, strict=True)
            ]
            idle = fleet.poll()
            # Sessions that ended while the fleet sat idle (missed heartbeats under load).
            figures["idle_reconnects"] = idle["sessions"] - settled["sessions"]

            a_url = instances[0].url
            local, remote = per[ids_of[0]], [s for s in ids if held.get(s) != ids_of[0]]
            for label, size in (("1", 1), ("100", 100), ("1000", 1000)):
                for where, pool in (("local", local), ("routed", remote)):
                    if len(pool) >= size:
                        got = fan_out(a_url, token, pool[:size], args.rounds)
                        figures[f"fanout_{label}_{where}_p50_ms"] = got["p50"]
                        figures[f"fanout_{label}_{where}_p99_ms"] = got["p99"]
            got = fan_out(a_url, token, ids, args.rounds if n <= 2000 else 2)
            figures["fanout_all_p50_ms"], figures["fanout_all_p99_ms"] = got["p50"], got["p99"]
            figures["fanout_all_failed"] = got["failed"]
            for where, pool in (("same", local), ("cross", remote)):
                got = round_trips(a_url, token, pool[:50], args.calls)
                figures[f"command_{where}_p50_ms"] = got["p50"]
                figures[f"command_{where}_p99_ms"] = got["p99"]

            # The reconnect storm: the last instance dies; its agents come back elsewhere.
            victim = instances[-1]
            moved = len(per[ids_of[-1]])
            before = fleet.poll()
            t_kill = time.monotonic()
            mark.value = time.time()
            victim.process.kill()  # type: ignore[union-attr]
            victim.process.wait()  # type: ignore[union-attr]
            # Back: as many agents connected as before, and at least the victim's count of
            # them in sessions begun after the kill.
            try:
                after = fleet.wait(
                    lambda s: s["since_mark"] >= moved and s["connected"] >= before["connected"],
                    timeout=600,
                )
                figures["storm_complete"] = True
            except RuntimeError as exc:  # shown with the figures, not instead of them
                print(exc, file=sys.stderr)
                after = fleet.poll()
                figures["storm_complete"] = False
            figures["storm_agents"] = moved
            figures["storm_seconds"] = time.monotonic() - t_kill
            figures["storm_errors"] = after["errors"] - before["errors"]
            figures["storm_last_error"] = after["last_error"]
            survivors = ids_of[:-1]
            time.sleep(1)
            held = holders(client, ids)
            figures["held_by_survivors"] = sum(1 for s in ids if held.get(s) in survivors)
            got = fan_out(a_url, token, ids, 1)
            figures["fanout_all_after_storm_p99_ms"] = got["p99"]
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
                if w.is_alive():
                    w.kill()
            for cp in instances:
                cp.stop()
            lb.stop()
            rd.stop()
    pg.stop()

    def pair(prefix: str) -> str:
        p50, p99 = figures.get(f"{prefix}_p50_ms"), figures.get(f"{prefix}_p99_ms")
        return "-" if p50 is None else f"{p50:.1f} / {p99:.1f} ms"

    rows = [
        ("agents connected (per instance)", f"{n} ({figures['agents_per_instance']})", "-"),
        (
            "time to connect all (handshakes retried)",
            f"{figures['connect_seconds']:.1f} s ({figures['connect_errors']})",
            "-",
        ),
        ("sessions ended while idle", f"{figures['idle_reconnects']}", "0"),
        ("idle CPU per instance (heartbeats)", f"{figures['idle_cpu_percent']} %", "-"),
        ("RSS per agent per instance", f"{figures['rss_per_agent_kb']} KB", "-"),
    ]
    for label in ("1", "100", "1000"):
        rows.append((f"fan-out to {label}, held by A: p50/p99", pair(f"fanout_{label}_local"), ""))
        rows.append((f"fan-out to {label}, routed: p50/p99", pair(f"fanout_{label}_routed"), ""))
    rows += [
        (f"fan-out to all {n}: p50/p99", pair("fanout_all"), "p99 < 250 ms at 1,000"),
        (f"fan-out to all {n}: commands failed", f"{figures['fanout_all_failed']}", "0"),
        ("one command via the API, same instance", pair("command_same"), "p50<10 p99<20 ms"),
        ("one command via the API, cross-instance", pair("command_cross"), "-"),
        (
            f"reconnect storm ({figures['storm_agents']} agents)",
            f"{figures['storm_seconds']:.1f} s, {figures['storm_errors']} errors"
            + ("" if figures["storm_complete"] else " (NOT all back)"),
            "all back",
        ),
        ("held by the survivors afterwards", f"{figures['held_by_survivors']} / {n}", f"{n}"),
    ]
    print_figures(rows, figures)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the worker processes
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens in a log
    sys.exit(main())
