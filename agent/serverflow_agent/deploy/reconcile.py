"""`state.apply`: make this server run what the desired-state document says.

Per changed app (docs/deploys.md):

    sync repo -> check out the commit into a new release dir -> detect -> build
      -> start the new release on a fresh port -> health check -> switch the proxy
      (the app's domains, and its public port: its stable address on this server)
      -> point `current` at it, record it -> drain, stop the old release -> prune

Until the proxy switch nothing the old release needs is touched, and every failure before
it stops the new release: the previous release keeps running and serving. With a fixed
port the old release has to stop before the new one can bind; if the new one then fails,
the old one is started again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from serverflow_agent import progress
from serverflow_agent.config import state_dir_from
from serverflow_agent.deploy import git, ports, procfile, versions
from serverflow_agent.deploy.address import public_address
from serverflow_agent.deploy.build import Builder, short
from serverflow_agent.deploy.desired import (
    AppSpec,
    DeployError,
    check_app_name,
    parse_app,
)
from serverflow_agent.deploy.detect import Plan, detect
from serverflow_agent.deploy.environment import app_env
from serverflow_agent.deploy.health import wait_healthy
from serverflow_agent.deploy.proxyswitch import NginxSwitch, ProxySwitch, ProxySwitchError
from serverflow_agent.deploy.releases import AppDir, now_ms
from serverflow_agent.deploy.runtimes import load_runtimes
from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.state import AgentState
from serverflow_contract import naming
from serverflow_contract.desired import document_hash
from serverflow_contract.runtime import ProcessInfo, ReleaseProcess, Runtime, RuntimeFailure

APPLY_BUDGET_S = 1700.0  # the action's timeout is 1800 s: leave time to answer
LOCK_TIMEOUT_S = 600.0
LOG_TAIL_LINES = 30
APPLIED_KEY = "deploy.applied"
RUNNING = {"online", "launching", "waiting restart"}
CRASH_RESTARTS = 2
WORKER_SETTLE_S = 2.0  # a process without a port must keep running this long

Emit = Callable[[str, str | None, str | None], None]


def apply(params: dict[str, Any]) -> dict[str, Any]:
    """The handler of the `state.apply` action (runs in the action runner)."""
    state_dir = state_dir_from(None)
    return Reconciler(DeploySettings.load(state_dir), state_dir).apply(params)


class DocumentError(Exception):
    """The document as a whole cannot be applied (nothing was changed)."""


class Reconciler:
    def __init__(
        self,
        settings: DeploySettings,
        state_dir: Path,
        runtimes: Mapping[str, Runtime] | None = None,
        proxy: ProxySwitch | None = None,
        emit: Emit = progress.emit,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self._runtimes = dict(runtimes) if runtimes is not None else None
        self.proxy: ProxySwitch = proxy if proxy is not None else NginxSwitch(settings)
        self._emit = emit
        self.deadline = time.monotonic() + APPLY_BUDGET_S

    @property
    def runtimes(self) -> dict[str, Runtime]:
        if self._runtimes is None:
            self._runtimes = load_runtimes(self.settings)
        return self._runtimes

    def emit(self, line: str, app: str | None = None, stage: str | None = None) -> None:
        self._emit(line, app, stage)

    # -- the document --------------------------------------------------------------------

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        version, digest = document.get("version"), document.get("hash")
        if document_hash(document) != digest:
            raise DocumentError(
                "the document's hash does not match its content (sha256 of the canonical "
                "JSON without 'hash')"
            )
        entries = document.get("apps")
        if not isinstance(entries, list):
            raise DocumentError("apps must be a list")
        names = [e.get("name") if isinstance(e, dict) else None for e in entries]
        if len(set(map(str, names))) != len(names):
            raise DocumentError("an app name appears twice in the document")
        self.settings.apps_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self._applied().get("hash") == digest:
                if self._all_running([str(n) for n in names]):
                    self.emit(f"desired state version {version} is already applied: nothing to do")
                    return {
                        "version": version,
                        "hash": digest,
                        "changed": False,
                        "apps": {str(n): self._unchanged(str(n)) for n in names},
                        "address": public_address(self.settings, self.state_dir),
                    }
                # Applied, but something is not running any more (PM2's daemon was killed,
                # the server rebooted): bring it back from the releases on disk.
                self.emit(f"desired state version {version} is applied but not all of it runs")
            self.emit(
                f"applying desired state version {version}"
                + (f" (deployment {document['deployment']})" if document.get("deployment") else "")
            )
            outcomes: dict[str, dict[str, Any]] = {}
            # Removed apps first: a domain or a public port they had may be another's now.
            for name in sorted(self._deployed() - {str(n) for n in names}):
                outcomes[name] = self._remove(name)
            for entry in entries:
                outcome = self._apply_app(entry)
                outcomes[str(outcome.pop("name"))] = outcome
            changed = any(o["status"] != "unchanged" for o in outcomes.values())
            if all(o["status"] != "failed" for o in outcomes.values()):
                self._record_applied(version, digest)
            return {
                "version": version,
                "hash": digest,
                "changed": changed,
                "apps": outcomes,
                "address": public_address(self.settings, self.state_dir),
            }

    def _applied(self) -> dict[str, Any]:
        """The last document applied without a failure: {version, hash, applied_at}."""
        state = AgentState.open(self.state_dir)
        try:
            value = state.get(APPLIED_KEY)
        finally:
            state.close()
        return value if isinstance(value, dict) else {}

    def _record_applied(self, version: Any, digest: Any) -> None:
        state = AgentState.open(self.state_dir)
        try:
            state.set(APPLIED_KEY, {"version": version, "hash": digest, "applied_at": now_ms()})
        finally:
            state.close()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One apply at a time on this server (two commands may arrive together)."""
        fd = os.open(self.settings.apps_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    raise DocumentError("another state.apply is still running")
                if not told:
                    self.emit("waiting for the previous state.apply to finish")
                    told = True
                time.sleep(0.2)
            yield
        finally:
            os.close(fd)

    def _deployed(self) -> set[str]:
        """Apps this agent runs (their state says live), whether or not still wanted."""
        found = set()
        for path in self.settings.apps_dir.iterdir():
            if path.name.startswith("."):
                continue
            try:
                app = AppDir(self.settings.apps_dir, path.name)
            except DeployError:
                continue
            state = app.state()
            if state and state.get("status") == "live":
                found.add(path.name)
        return found

    def _all_running(self, names: list[str]) -> bool:
        """Whether every app's recorded release runs (one status call per runtime)."""
        listings: dict[str, set[str]] = {}
        for name in names:
            try:
                state = AppDir(self.settings.apps_dir, name).state()
            except DeployError:
                return False
            if not state or state.get("status") != "live":
                return False
            processes = _process_names(state)
            if not processes:
                continue
            runtime_name = str(state.get("runtime"))
            if runtime_name not in listings:
                runtime = self.runtimes.get(runtime_name)
                if runtime is None:
                    return False
                listings[runtime_name] = {p.name for p in runtime.status("") if p.status in RUNNING}
            if not set(processes) <= listings[runtime_name]:
                return False
        return True

    def _unchanged(self, name: str) -> dict[str, Any]:
        try:
            state = AppDir(self.settings.apps_dir, name).state() or {}
        except DeployError:
            state = {}
        return {
            "status": "unchanged",
            "release": state.get("release"),
            "commit": state.get("commit"),
            "port": state.get("port"),
            "public_port": state.get("public_port"),
        }

    # -- one app -------------------------------------------------------------------------

    def _apply_app(self, entry: Any) -> dict[str, Any]:
        name = str(entry.get("name")) if isinstance(entry, dict) else "?"
        try:
            spec = parse_app(entry)
        except DeployError as exc:
            self.emit(f"refused: {exc.reason}", name, "failed")
            return {"name": name, "status": "failed", "reason": exc.reason, "log_tail": []}
        app = AppDir(self.settings.apps_dir, spec.name)
        old = app.state()
        if old is not None and old.get("status") != "live":
            old = None
        if old is not None and old.get("digest") == spec.digest and self._running(old):
            return {"name": spec.name, **self._unchanged(spec.name)}
        started = time.monotonic()
        try:
            outcome = self._deploy(spec, app, old)
        except DeployError as exc:
            reason, tail = exc.reason, exc.log_tail
        except (RuntimeFailure, ProxySwitchError, OSError) as exc:
            reason, tail = str(exc), []
        except Exception as exc:  # noqa: BLE001 - one app's surprise must not stop the others
            reason, tail = f"agent error: {type(exc).__name__}: {exc}", []
        else:
            self.emit(
                f"release {spec.release} is live ({time.monotonic() - started:.1f} s)",
                spec.name,
                "done",
            )
            return {"name": spec.name, **outcome}
        self.emit(f"deploy failed: {reason}", spec.name, "failed")
        failed: dict[str, Any] = {
            "name": spec.name,
            "status": "failed",
            "release": spec.release,
            "commit": spec.commit,
            "port": None,
            "reason": reason,
            "log_tail": [line[:500] for line in once(tail)[-LOG_TAIL_LINES:]],
        }
        if old is not None:
            failed["serving"] = {"release": old.get("release"), "port": old.get("port")}
        return failed

    def _running(self, state: dict[str, Any]) -> bool:
        names = _process_names(state)
        if not names:
            return True  # a static site: nothing to run
        runtime = self.runtimes.get(str(state.get("runtime")))
        if runtime is None:
            return False
        prefix = naming.process_prefix(str(state.get("app")))
        running = {p.name for p in runtime.status(prefix) if p.status in RUNNING}
        return set(names) <= running

    def _deploy(self, spec: AppSpec, app: AppDir, old: dict[str, Any] | None) -> dict[str, Any]:
        runtime = self.runtimes.get(spec.runtime)
        if runtime is None:
            available = ", ".join(sorted(self.runtimes)) or "none"
            raise DeployError(
                f"the {spec.runtime} runtime is not available on this server "
                f"(available: {available})"
            )
        self.emit(
            f"deploying release {spec.release} (commit {spec.commit[:12]})", spec.name, "start"
        )
        if spec.port is not None and not (old and old.get("port") == spec.port):
            ports.check_fixed(spec.port)  # before building anything
        app.create()
        plan = self._prepare(spec, app)
        release_dir = app.build_dir(spec.release)
        env = app_env(release_dir, conventions(spec, plan), None)
        again = bool(old and old.get("release") == spec.release)
        if plan.release is not None and not again:
            self._release_phase(spec, plan, release_dir, env)
        old_names = set(_process_names(old or {}))
        # The same release again (new settings, or brought back): other process names.
        label = spec.release
        if naming.process_name(spec.name, label) in old_names:
            label = f"{spec.release}-b"
        started: list[str] = []
        web: str | None = None
        port: int | None = None
        stopped_old = False
        try:
            if plan.start is not None:
                port, stopped_old = self._port(spec, old, runtime)
                web = naming.process_name(spec.name, label)
                self._start(spec, runtime, web, plan.start, release_dir, {**env, "PORT": str(port)})
                started.append(web)
            workers = self._start_workers(spec, plan, runtime, label, release_dir, env)
            started += workers
            if web is not None and port is not None:
                self._wait_healthy(spec, runtime, web, port, started)
            if workers:
                self._wait_alive(spec, runtime, workers)
            static_root = release_dir if plan.kind == "static" else None
            routed = bool(spec.domains) or spec.public_port is not None
            if plan.start is None and plan.kind != "static":
                if routed:
                    self.emit(
                        "no web process (the Procfile has no web: line): the app is not routed",
                        spec.name,
                        "proxy",
                    )
            elif plan.kind == "static":
                self.emit(
                    "static site: the proxy serves the release directory"
                    if routed
                    else "static site without domains: nothing serves it",
                    spec.name,
                    "start",
                )
            public_port = None
            if plan.start is not None or plan.kind == "static":
                public_port = self._switch_proxy(spec, old, port, static_root, plan.static)
        except BaseException:
            if started:
                self.emit(f"stopping the new release {spec.release}", spec.name, "rollback")
            for name in started:
                with contextlib.suppress(RuntimeFailure):
                    runtime.delete(name)
            old_web = old.get("process") if old else None
            if stopped_old and old_web:
                self.emit(f"starting the previous release {old_web} again", spec.name, "rollback")
                with contextlib.suppress(RuntimeFailure):
                    runtime.restart(str(old_web))
            raise
        # The new release serves: from here on, this is what runs.
        app.switch_current(spec.release)
        history = [spec.release, *[r for r in (old or {}).get("history", []) if r != spec.release]]
        app.save_state(
            {
                "app": spec.name,
                "status": "live",
                "release": spec.release,
                "commit": spec.commit,
                "runtime": spec.runtime,
                "process": web,
                "processes": started,
                "port": port,
                "public_port": public_port,
                "static_root": str(release_dir) if plan.kind == "static" else None,
                "domains": list(spec.domains),
                "tls": spec.tls,
                "digest": spec.digest,
                "env_keys": sorted(spec.env),
                "previous": old.get("release") if old else None,
                "history": history[:100],
                "updated_at": now_ms(),
            }
        )
        self._retire(spec, runtime, old, started, drained=not stopped_old)
        protect = {spec.release} | ({old["release"]} if old and old.get("release") else set())
        removed = app.prune(spec.keep_releases, history, protect)
        if removed:
            self.emit(f"removed old releases: {', '.join(removed)}", spec.name, "prune")
        return {
            "status": "live",
            "release": spec.release,
            "commit": spec.commit,
            "port": port,
            "public_port": public_port,
            "process": web,
            "processes": started,
        }

    def _start(
        self,
        spec: AppSpec,
        runtime: Runtime,
        name: str,
        command: tuple[str, ...],
        release_dir: Path,
        env: Mapping[str, str],
    ) -> None:
        argv, assigned = _program(command, release_dir, env)
        where = f" on port {env['PORT']}" if "PORT" in env else ""
        self.emit(f"starting {name}: {' '.join(argv)}{where}", spec.name, "start")
        runtime.start(ReleaseProcess(name, argv, release_dir, {**env, **assigned}))

    def _start_workers(
        self,
        spec: AppSpec,
        plan: Plan,
        runtime: Runtime,
        label: str,
        release_dir: Path,
        env: Mapping[str, str],
    ) -> list[str]:
        """Start the release's other Procfile process types, as many as `formation` says."""
        declared = {kind for kind, _ in plan.processes}
        unknown = sorted(set(spec.formation) - declared - {naming.WEB})
        if unknown:
            self.emit(
                f"formation names {', '.join(unknown)}, which the Procfile does not have",
                spec.name,
                "start",
            )
        names = []
        for kind, command in plan.processes:
            count = spec.formation.get(kind, 1)
            if count == 0:
                self.emit(f"{kind}: scaled to 0, not started", spec.name, "start")
            for index in range(1, count + 1):
                name = naming.process_name(spec.name, label, kind, index)
                process_env = {**env, "SERVERFLOW_PROCESS": f"{kind}.{index}"}
                self._start(spec, runtime, name, command, release_dir, process_env)
                names.append(name)
        return names

    def _release_phase(
        self, spec: AppSpec, plan: Plan, release_dir: Path, env: Mapping[str, str]
    ) -> None:
        """The Procfile's release command: once per new release, in it, before the switch."""
        assert plan.release is not None
        argv, assigned = _program(plan.release, release_dir, env)
        self.emit(
            "running the release command (the old release keeps serving)", spec.name, "release"
        )
        Builder(
            release_dir,
            {**env, **assigned},
            self.settings.cache_dir,
            self.settings.python,
            lambda line: self.emit(line, spec.name, "release"),
            self.deadline,
        ).run(argv, what=f"the release command `{short(argv)}`")
        self.emit("release command done", spec.name, "release")

    def _prepare(self, spec: AppSpec, app: AppDir) -> Plan:
        """The built release: reused when it (or another release of the same commit and
        build settings) exists, else fetched, checked out and built."""
        marker = app.built(spec.release)
        if marker is not None and marker.get("commit") == spec.commit:
            self.emit(
                f"release {spec.release} is already built: reusing it (no fetch, no build)",
                spec.name,
                "checkout",
            )
            return self._planned(spec, marker)
        running = (app.state() or {}).get("release")
        if marker is not None and running == spec.release:
            raise DeployError(
                f"release {spec.release} is running with commit {str(marker.get('commit'))[:12]}; "
                "a release id names one commit: deploy this one under a new release id"
            )
        app.forget(spec.release)  # a leftover of an interrupted build, or another commit
        inputs = build_inputs(spec)
        found = app.find_build(inputs)
        if found is not None:
            source, marker = found
            self.emit(
                f"commit {spec.commit[:12]} is already built (release {source}): reusing its "
                "build (no fetch, no build)",
                spec.name,
                "checkout",
            )
            app.mark_built(spec.release, {**marker, "build": source, "built_at": now_ms()})
            return self._planned(spec, marker)
        release_dir = app.release(spec.release)
        try:
            git.sync(
                spec.repo,
                app.mirror,
                spec.commit,
                lambda line: self.emit(line, spec.name, "sync"),
                self.deadline - time.monotonic(),
            )
            self.emit(f"checking out {spec.commit[:12]}", spec.name, "checkout")
            git.export(app.mirror, spec.commit, release_dir)
            plan = detect(release_dir, spec.build, spec.start)
            self.emit(_describe(plan), spec.name, "detect")
            for note in plan.notes:
                self.emit(note, spec.name, "detect")
            plan = self._build(spec, plan, release_dir)
        except BaseException:
            app.forget(spec.release)
            raise
        app.mark_built(
            spec.release,
            {
                "commit": spec.commit,
                "inputs": inputs,
                "plan": plan.as_dict(),
                "built_at": now_ms(),
            },
        )
        return plan

    @staticmethod
    def _planned(spec: AppSpec, marker: dict[str, Any]) -> Plan:
        plan = Plan.from_dict(marker["plan"])
        return plan if spec.start is None else replace(plan, start=spec.start)

    def _build(self, spec: AppSpec, plan: Plan, release_dir: Path) -> Plan:
        """Check the interpreter versions the repository asks for, then build."""

        def emit(line: str) -> None:
            self.emit(line, spec.name, "build")

        env = app_env(release_dir, conventions(spec, plan), spec.port)
        python = self.settings.python
        found: list[tuple[str, str]] = []
        if plan.kind == "node":
            node = versions.node(release_dir, env)
            if node is not None:
                found.append(("node", node.describe("Node.js")))
        python_version = None
        if plan.python_env is not None or versions.python_request(release_dir) is not None:
            interpreter = versions.python(release_dir, python, env, emit, self._left())
            python = interpreter.program
            python_version = interpreter.version + (
                f" (from {interpreter.source})" if interpreter.source else ""
            )
            found.append(("python", interpreter.describe("Python")))
        for _, text in found:
            self.emit(text, spec.name, "detect")
        builder = Builder(release_dir, env, self.settings.cache_dir, python, emit, self.deadline)
        builder.python_version = python_version
        builder.build(plan)
        static = builder.django_static() if plan.kind == "python" else ()
        return replace(plan, versions=tuple(found), static=static)

    def _left(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def _port(
        self, spec: AppSpec, old: dict[str, Any] | None, runtime: Runtime
    ) -> tuple[int, bool]:
        """The new release's port, and whether the old release had to stop to free it."""
        if spec.port is None:
            reserved = self._reserved_ports()
            if spec.public_port is not None:
                reserved.add(spec.public_port)  # nginx may not listen on it yet
            return ports.allocate(self.settings.port_range, reserved), False
        old_process = old.get("process") if old else None
        if old and old.get("port") == spec.port and old_process:
            self.emit(
                f"fixed port {spec.port}: stopping the old release first (a short gap)",
                spec.name,
                "start",
            )
            runtime.stop(str(old_process))
            deadline = time.monotonic() + 15
            while ports.in_use(spec.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            try:
                ports.check_fixed(spec.port)
            except DeployError:
                runtime.restart(str(old_process))
                raise
            return spec.port, True
        ports.check_fixed(spec.port)
        return spec.port, False

    def _reserved_ports(self) -> set[int]:
        """Ports recorded for running releases (kept even while one restarts), and the
        public ports the proxy listens on."""
        reserved = set()
        for path in self.settings.apps_dir.glob("*/state.json"):
            state = AppDir(self.settings.apps_dir, path.parent.name).state() or {}
            if state.get("status") != "live":
                continue
            for key in ("port", "public_port"):
                if isinstance(state.get(key), int):
                    reserved.add(state[key])
        return reserved

    def _wait_healthy(
        self, spec: AppSpec, runtime: Runtime, process: str, port: int, started: list[str]
    ) -> None:
        what = f"GET {spec.health.path}" if spec.health.path else "a connection"
        host = spec.domains[0] if spec.domains and spec.health.path else None
        shown = f"{what} (Host: {host})" if host else what
        self.emit(f"health check: waiting for {shown} on port {port}", spec.name, "health")

        def crashed() -> str | None:
            listed = {p.name: p for p in runtime.status(spec.process_prefix)}
            for name in started:
                why = _crash(listed.get(name))
                if why:
                    return why if name == process else f"process {name} {why}"
            return None

        try:
            wait_healthy(
                port,
                spec.health,
                crashed,
                lambda line: self.emit(line, spec.name, "health"),
                host=host,
                tls=spec.tls,
            )
        except DeployError as exc:
            raise DeployError(exc.reason, runtime.logs(process, LOG_TAIL_LINES)) from None
        # The answer must have come from the new release, not from whatever else may
        # hold the port (a leftover process, another program that took it meanwhile).
        found = [p for p in runtime.status(process) if p.name == process and p.pid]
        if not found or not ports.served_by(found[0].pid or 0, port):
            tail = runtime.logs(process, LOG_TAIL_LINES)
            raise DeployError(
                f"port {port} answers, but not from the new release (something else "
                "listens on it, and the app could not)",
                tail,
            )
        self.emit("health check passed", spec.name, "health")

    def _wait_alive(self, spec: AppSpec, runtime: Runtime, names: list[str]) -> None:
        """Processes without a port are healthy when they keep running for a while."""
        self.emit(
            f"checking that {', '.join(names)} keep running ({WORKER_SETTLE_S:g} s)",
            spec.name,
            "health",
        )
        deadline = time.monotonic() + WORKER_SETTLE_S
        while True:
            listed = {p.name: p for p in runtime.status(spec.process_prefix)}
            for name in names:
                why = _crash(listed.get(name))
                if why:
                    raise DeployError(f"process {name} {why}", runtime.logs(name, LOG_TAIL_LINES))
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        self.emit("processes are running", spec.name, "health")

    def _switch_proxy(
        self,
        spec: AppSpec,
        old: dict[str, Any] | None,
        port: int | None,
        static_root: Path | None,
        static_paths: tuple[tuple[str, str], ...] = (),
    ) -> int | None:
        """Route the app's domains and public port to the new release; the public port
        the proxy now listens on for it, if any."""
        public_port = spec.public_port
        missing = self.proxy.available() if public_port or (old or {}).get("public_port") else None
        if public_port is not None and missing is not None:
            # As before public ports existed: the app runs, on its release's own port.
            self.emit(
                f"no stable address for the app on this server: {missing}; it is reached on "
                f"the port of its release ({port or 'none'}) only",
                spec.name,
                "proxy",
            )
            public_port = None
        if spec.domains or public_port is not None:
            where = [*spec.domains, *([f"port {public_port}"] if public_port is not None else [])]
            self.emit(f"switching the proxy: {', '.join(where)}", spec.name, "proxy")
            try:
                self.proxy.switch(
                    spec.name,
                    spec.domains,
                    spec.release,
                    tls=spec.tls and bool(spec.domains),
                    port=port,
                    static_root=static_root,
                    static_paths=static_paths if port is not None else (),
                    public_port=public_port,
                    progress=lambda line: self.emit(line, spec.name, "certificate"),
                )
            except ProxySwitchError as exc:
                raise DeployError(f"proxy: {exc}") from exc
            self.emit("the proxy serves the new release", spec.name, "proxy")
        elif old and (old.get("domains") or (old.get("public_port") and missing is None)):
            what = "domains" if old.get("domains") else "public port"
            self.emit(f"no {what} any more: removing the proxy configuration", spec.name, "proxy")
            try:
                self.proxy.remove(spec.name)
            except ProxySwitchError as exc:
                raise DeployError(f"proxy: {exc}") from exc
        return public_port

    def _retire(
        self,
        spec: AppSpec,
        runtime: Runtime,
        old: dict[str, Any] | None,
        started: list[str],
        drained: bool,
    ) -> None:
        """Stop the old release (after the drain), and anything else left of this app."""
        old = old or {}
        old_names = [n for n in _process_names(old) if n not in started]
        old_runtime = self.runtimes.get(str(old.get("runtime")))
        if old_names:
            if drained and old.get("process") and self.settings.drain_seconds > 0:
                self.emit(
                    f"draining the old release for {self.settings.drain_seconds:g} s",
                    spec.name,
                    "stop",
                )
                time.sleep(self.settings.drain_seconds)
            self.emit(f"stopping the old release {old.get('release')}", spec.name, "stop")
            for name in old_names:
                with contextlib.suppress(RuntimeFailure):
                    (old_runtime or runtime).delete(name)
        # Processes of this app that nothing points at (an interrupted deploy's, say).
        for info in runtime.status(spec.process_prefix):
            if info.name not in started:
                with contextlib.suppress(RuntimeFailure):
                    runtime.delete(info.name)

    # -- removal -------------------------------------------------------------------------

    def _remove(self, name: str) -> dict[str, Any]:
        check_app_name(name)
        app = AppDir(self.settings.apps_dir, name)
        state = app.state() or {}
        self.emit("not in the desired state any more: removing it", name, "remove")
        try:
            if state.get("domains") or state.get("public_port"):
                self.proxy.remove(name)
            runtime = self.runtimes.get(str(state.get("runtime")))
            if runtime is not None:
                for info in runtime.status(naming.process_prefix(name)):
                    runtime.delete(info.name)
        except (ProxySwitchError, RuntimeFailure) as exc:
            self.emit(f"removal failed: {exc}", name, "failed")
            return {"status": "failed", "release": state.get("release"), "reason": str(exc)}
        app.current.unlink(missing_ok=True)
        app.save_state(
            {**state, "status": "removed", "process": None, "port": None, "updated_at": now_ms()}
        )
        self.emit("removed (its releases stay on disk)", name, "remove")
        return {"status": "removed", "release": state.get("release"), "commit": state.get("commit")}


def _describe(plan: Plan) -> str:
    steps = [" ".join(s) for s in plan.build]
    if plan.python_env:
        steps.insert(0, f"virtualenv ({plan.python_env})")
    if plan.start:
        start = " ".join(plan.start)
    else:
        start = "none (static files)" if plan.kind == "static" else "none (no web process)"
    return f"{plan.kind} app: build: {'; '.join(steps) or 'nothing'}; start: {start}"


def once(lines: list[str]) -> list[str]:
    """`lines` with a repeated ending kept once (a process that crashed and was restarted
    prints the same lines at each start), saying how many times it came."""
    for size in range(1, len(lines) // 2 + 1):
        block = lines[-size:]
        if lines[-2 * size : -size] != block:
            continue
        runs, end = 1, len(lines) - size
        while end - size >= 0 and lines[end - size : end] == block:
            runs, end = runs + 1, end - size
        rest = lines[:end]
        if rest and block[-len(rest) :] == rest:
            rest = []  # the start of the tail is the end of one more run, cut off
        said = "the line above" if size == 1 else f"the {size} lines above"
        return [*rest, *block, f"({said} came {runs} times in a row)"]
    return lines


def _process_names(state: Mapping[str, Any]) -> list[str]:
    """Every process a recorded state runs (states before process types had only one)."""
    names = state.get("processes")
    if isinstance(names, list):
        return [str(n) for n in names]
    process = state.get("process")
    return [str(process)] if process else []


def _crash(info: ProcessInfo | None) -> str | None:
    if info is None:
        return "disappeared"
    if info.status in ("errored", "stopped", "stopping"):
        return f"crashed on start (status {info.status}, restarted {info.restarts} times)"
    if info.restarts >= CRASH_RESTARTS:
        return f"crashed on start (restarted {info.restarts} times)"
    return None


def build_inputs(spec: AppSpec) -> str:
    """What a build depends on, as a digest: two releases with the same one share a build
    (env vars are not part of it, as on Heroku: a config change does not rebuild)."""
    body = {"v": 1, "commit": spec.commit, "build": [list(s) for s in spec.build or []] or None}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def conventions(spec: AppSpec, plan: Plan) -> dict[str, str]:
    """The app's env with what the common buildpacks provide (docs/deploys.md,
    "Conventions"): the app's own values win, except for SERVERFLOW_*, which are ours."""
    env: dict[str, str] = {}
    if plan.kind == "node":
        env["NODE_ENV"] = "production"
    if plan.kind == "python" or plan.python_env:
        env["PYTHONUNBUFFERED"] = "1"  # output reaches the logs as it is printed
    env.update(spec.env)
    env["SERVERFLOW_APP"] = spec.name
    env["SERVERFLOW_RELEASE"] = spec.release
    if spec.domains:
        env["SERVERFLOW_DOMAIN"] = spec.domains[0]
        env["SERVERFLOW_DOMAINS"] = ",".join(spec.domains)
    return env


def _program(
    command: tuple[str, ...], release: Path, env: Mapping[str, str]
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The argv to run (variables filled in, argv[0] an absolute path: PM2 gets no shell to
    do either) and the variables the command's leading NAME=value words set."""
    words = list(command)
    assigned: dict[str, str] = {}
    while len(words) > 1 and procfile.ASSIGNMENT.fullmatch(words[0]):
        key, _, value = words.pop(0).partition("=")
        assigned[key] = procfile.expand(value, {**env, **assigned})
    full = {**env, **assigned}
    argv = [
        procfile.expand(word, full)
        for word in words
        if procfile.expand(word, full) or not procfile.VARIABLE.fullmatch(word)
    ]
    if not argv:
        raise DeployError(f"the command {' '.join(command)!r} is empty once expanded")
    program = argv[0]
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else release / program
        found = str(path) if os.access(path, os.X_OK) and path.is_file() else None
    else:
        found = shutil.which(program, path=env.get("PATH"))
    if found is None:
        raise DeployError(f"start command not found: {program}")
    return (found, *argv[1:]), assigned
