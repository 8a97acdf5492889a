"""Coverage-guided fuzzing (atheris, libFuzzer) of what reads untrusted bytes.

    .venv/bin/python bench/fuzz.py --minutes 10          # each target for 10 minutes
    .venv/bin/python bench/fuzz.py --runs 1000000        # each target for a million inputs
    .venv/bin/python bench/fuzz.py --target desired --seconds 30

Targets:
- protocol: the agent's and the control plane's frame parser (`protocol.parse_frame`), and
  signature verification of whatever parses; only ProtocolError may come out.
- desired: the agent's state.apply input: JSON, the action's schema, the document hash and
  each app entry (`parse_app`); only the errors those raise for bad input may come out.
- hub: the control plane's handling of an agent connection (`AgentHub.serve` on a SQLite
  database with one registered server): fuzzed frames as the first frames of a
  connection; nothing may escape and every refusal closes the connection.

Each target runs in its own process, seeded with valid inputs; the figures (inputs run,
seconds, inputs per second) and any crash (the input is saved next to the report) are
printed at the end. Exits 1 when a target crashed or hung.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import Any

TARGETS = ("protocol", "desired", "hub")
FRAME_SEPARATOR = b"\n\x00\n"  # the hub target reads one input as several frames
BINARY = 0x01  # an input (or frame) starting with this byte is sent as a binary frame
DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


# -- seeds ------------------------------------------------------------------------------


def _seed_frames() -> list[bytes]:
    from serverflow_contract import protocol

    key = protocol.new_signing_key()
    command = protocol.new_command(key, str(uuid.uuid4()), "system.disk_usage", {"path": "/"})
    error = protocol.error_frame("FRM002", "bad")
    return [command.encode().encode(), error.encode().encode(), b'{"type":"hello","body":{}}']


def _seed_documents() -> list[bytes]:
    from serverflow_contract.desired import document_hash

    app = {
        "name": "shop",
        "runtime": "pm2",
        "repo": "https://git.example/shop.git",
        "commit": "a" * 40,
        "release": "r1-aaaaaaa",
        "build": [["npm", "ci"]],
        "start": ["node", "server.js"],
        "port": 4001,
        "env": {"NODE_ENV": "production"},
        "health": {"path": "/healthz", "timeout_s": 30},
        "domains": ["shop.example.com"],
        "tls": True,
        "keep_releases": 5,
    }
    doc: dict[str, Any] = {"version": 3, "deployment": "d-1", "apps": [app]}
    doc["hash"] = document_hash(doc)
    return [json.dumps(doc).encode(), b'{"version":0,"hash":"' + b"0" * 64 + b'","apps":[]}']


# -- targets (child process) --------------------------------------------------------------


def as_frame(data: bytes) -> str | bytes:
    """A WebSocket message: text (valid UTF-8, as the transport guarantees) or binary."""
    if data[:1] == bytes([BINARY]):
        return data[1:]
    return data.decode("utf-8", "replace")


def _protocol_target() -> Any:
    from serverflow_contract import protocol

    public = protocol.public_key_of(protocol.new_signing_key())

    def one(data: bytes) -> None:
        try:
            frame = protocol.parse_frame(as_frame(data))
        except protocol.ProtocolError:
            return
        if frame.sig is not None:
            try:
                protocol.verify(public, frame.type, frame.body, frame.sig)
            except protocol.ProtocolError:
                return

    return one


def _desired_target() -> Any:
    from serverflow_agent.deploy.desired import DeployError, parse_app
    from serverflow_contract import protocol
    from serverflow_contract.desired import STATE_APPLY, document_hash
    from serverflow_contract.schema import SchemaError, validate

    def one(data: bytes) -> None:
        try:
            document = protocol.loads(data.decode("utf-8"))
            validate(document, STATE_APPLY)
        except (UnicodeDecodeError, ValueError, protocol.ProtocolError, SchemaError):
            return
        try:
            document_hash(document)
        except ValueError:  # no canonical form (say, an integer beyond 2^53)
            return
        for entry in document["apps"]:
            try:
                parse_app(entry)
            except DeployError:
                continue

    return one


AGENT_FRAME_TYPES = ("heartbeat", "result", "event", "agent_key", "error", "command")


class _FuzzTransport:
    """The agent's side of one connection: the fuzzed frames, then a hang-up.

    With `agent` (a signing key and the hello it sent), it answers the challenge as the real
    agent would, then turns each fuzzed chunk into a frame the agent signs: the fuzzer then
    reaches what the hub does with authenticated frames (a compromised agent's view).
    """

    def __init__(self, frames: list[bytes], agent: tuple[Any, dict[str, Any]] | None = None):
        self.frames = frames
        self.agent = agent
        self.sent: list[str] = []
        self.closed: int | None = None

    async def receive(self) -> str | bytes:
        if self.closed is not None:
            raise ConnectionError("the agent hung up")
        if self.agent is None:
            if not self.frames:
                raise ConnectionError("the agent hung up")
            return as_frame(self.frames.pop(0))
        from serverflow_contract import protocol

        key, hello = self.agent
        if not self.sent:
            return protocol.make_frame("hello", hello).encode()
        last = json.loads(self.sent[-1])
        if last["type"] == "challenge":
            challenge = last["body"]
            auth = {k: challenge[k] for k in ("server_id", "session_id", "nonce")}
            return protocol.make_frame("auth", {**auth, "actions": []}, key).encode()
        if not self.frames:
            raise ConnectionError("the agent hung up")
        chunk = self.frames.pop(0)
        frame_type = (
            AGENT_FRAME_TYPES[(chunk[0] & 0x7F) % len(AGENT_FRAME_TYPES)] if chunk else "event"
        )
        try:
            body = json.loads(chunk[1:].decode("utf-8", "replace"))
        except ValueError:
            body = {}
        if isinstance(body, dict) and chunk[:1] and chunk[0] & 0x80:
            body["server_id"] = hello["server_id"]  # mostly name this server, as agents do
        try:
            sig = protocol.sign(key, frame_type, body)
        except (ValueError, TypeError, AttributeError):
            sig = "not-signable"
        return json.dumps({"type": frame_type, "body": body, "sig": sig})

    async def send(self, data: str) -> None:
        self.sent.append(data)

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = code


def _hub_target(workdir: Path) -> tuple[Any, list[bytes]]:
    from serverflow import db
    from serverflow.accounts import create_organization
    from serverflow.app import create_app
    from serverflow.controlplane import current
    from serverflow.models import Server
    from serverflow.plugins import Plugins
    from serverflow.settings import load_settings
    from serverflow.tenancy import scoped
    from serverflow_contract import protocol

    loop = asyncio.new_event_loop()
    url = f"sqlite://{workdir / 'fuzz.sqlite3'}"
    settings = load_settings(environ={}, data_dir=workdir / "data", database_url=url)
    app = create_app(settings, plugins=Plugins(load=False))
    agent_key = protocol.new_signing_key()

    async def setup() -> tuple[Any, dict[str, Any]]:
        await db.migrate(url)
        await app.startup()
        async with app.app_context():
            hub = current().hub
            cp_key = current().hub.key.public_key
        org = await create_organization("Fuzz")
        async with scoped(org.id):
            server = await Server.create(
                organization=org, name="web-1", agent_public_key=protocol.public_key_of(agent_key)
            )
        hello = {
            "protocol": protocol.PROTOCOL_VERSION,
            "org_id": str(org.id),
            "server_id": str(server.id),
            "public_key": protocol.public_key_of(agent_key),
            "control_plane_key": cp_key,
            "agent_version": "0.1.0",
        }
        return hub, hello

    hub, hello = loop.run_until_complete(setup())
    hello_frame = protocol.make_frame("hello", hello, None).encode().encode()
    heartbeat = {"server_id": hello["server_id"], "seq": 1, "sent_at": 1, "metrics": {}}
    result = {
        "command_id": str(uuid.uuid4()),
        "server_id": hello["server_id"],
        "status": "ok",
        "started_at": 1,
        "finished_at": 2,
        "output": {},
    }
    seeds = [
        b"\x00" + hello_frame,
        b"\x00" + hello_frame + FRAME_SEPARATOR + b'{"type":"auth","body":{},"sig":"x"}',
        *(b"\x00" + frame for frame in _seed_frames()),
        b"\x01" + bytes([0x80]) + json.dumps(heartbeat).encode(),
        b"\x01" + bytes([0x81]) + json.dumps(result).encode(),
        b"\x01" + bytes([0x82]) + b'{"kind":"progress","sent_at":1,"data":{"command_id":"x"}}',
    ]

    def one(data: bytes) -> None:
        # First byte even: raw frames from an unauthenticated peer; odd: the real agent,
        # authenticated, sending fuzzed frames it signs.
        agent = (agent_key, hello) if data[:1] and data[0] & 1 else None
        transport = _FuzzTransport(data[1:].split(FRAME_SEPARATOR)[:4], agent)
        try:
            loop.run_until_complete(asyncio.wait_for(hub.serve(transport), 5))
        except ConnectionError:
            return  # hung up after a frame the hub accepted: it was waiting for more
        if transport.closed is None:
            raise AssertionError("the hub stopped reading without closing the connection")

    return one, seeds


def child(target: str, corpus: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    logging.disable(logging.CRITICAL)  # every refusal logs a warning
    with atheris.instrument_imports(
        include=["serverflow", "serverflow_agent", "serverflow_contract"]
    ):
        if target == "protocol":
            one, seeds = _protocol_target(), _seed_frames()
        elif target == "desired":
            one, seeds = _desired_target(), _seed_documents()
        elif target == "hub":
            one, seeds = _hub_target(corpus.parent)
        elif target == "canary":  # a planted crash: the harness must report it

            @atheris.instrument_func
            def one(data: bytes) -> None:
                if data[:1] == b"!":
                    raise RuntimeError("planted crash")

            seeds = [b"ok"]
        else:
            raise SystemExit(f"unknown target {target}")
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *libfuzzer_args, str(corpus)], one)
    atheris.Fuzz()


# -- driver -----------------------------------------------------------------------------


def run_target(target: str, seconds: int, runs: int | None, out: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"sf-fuzz-{target}-"))
    corpus = work / "corpus"
    corpus.mkdir()
    args = [
        f"-max_total_time={seconds}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={out}/{target}-",
        "-print_final_stats=1",
    ]
    if runs is not None:
        args.append(f"-runs={runs}")
    cmd = [sys.executable, __file__, "--child", target, "--corpus", str(corpus), "--", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    try:
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=seconds + 120)
        report, failed = proc.stderr, proc.returncode != 0
    except subprocess.TimeoutExpired as exc:
        report, failed = (exc.stderr or b"") + b"\nHANG: the target did not stop in time\n", True
    (out / f"{target}.log").write_bytes(report)
    done = DONE.search(report)
    stats = re.search(rb"stat::number_of_executed_units: (\d+)", report)
    inputs = int(done.group(1)) if done else int(stats.group(1)) if stats else 0
    elapsed = int(done.group(2)) if done else seconds
    crashed = failed
    return {
        "target": target,
        "inputs": inputs,
        "seconds": elapsed,
        "per_second": round(inputs / max(elapsed, 1)),
        "crashed": crashed,
        "artifacts": sorted(str(p) for p in out.glob(f"{target}-*")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=[*TARGETS, "canary"], action="append")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--minutes", type=float)
    group.add_argument("--seconds", type=int)
    parser.add_argument("--runs", type=int, help="stop a target after this many inputs")
    parser.add_argument("--out", type=Path, help="where reports and crashing inputs go")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        try:
            child(args.child, args.corpus, [a for a in rest if a != "--"])
        except SystemExit:
            raise  # libFuzzer's own end (done, or a crash it has written out)
        except BaseException:
            traceback.print_exc()
            os._exit(2)  # a control plane's background threads must not keep it alive
        return 0
    seconds = args.seconds or int((args.minutes or (0 if args.runs else 1)) * 60) or 24 * 3600
    out = args.out or Path(tempfile.mkdtemp(prefix="sf-fuzz-out-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for target in args.target or TARGETS:
        print(
            f">> fuzzing {target} ({seconds} s at most"
            + (f", {args.runs} inputs" if args.runs else "")
            + ")",
            flush=True,
        )
        results.append(run_target(target, seconds, args.runs, out))
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'target':<10} {'inputs':>12} {'seconds':>8} {'inputs/s':>9}  result")
        for r in results:
            verdict = f"CRASH, see {r['artifacts'] or out}" if r["crashed"] else "no crash"
            print(
                f"{r['target']:<10} {r['inputs']:>12,} {r['seconds']:>8} {r['per_second']:>9,}"
                f"  {verdict}"
            )
        print(f"reports: {out}")
    return 1 if any(r["crashed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
