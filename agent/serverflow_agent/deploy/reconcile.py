"""`state.apply`: make this server run what the desired-state document says.

Per changed app (docs/deploys.md):

    sync repo -> check out the commit into a new release dir -> detect -> build
      -> start the new release on a fresh port -> health check -> switch the proxy
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
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from serverflow_agent import progress
from serverflow_agent.config import state_dir_from
from serverflow_agent.deploy import git, ports
from serverflow_agent.deploy.build import Builder
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
from serverflow_contract.runtime import ReleaseProcess, Runtime, RuntimeFailure

APPLY_BUDGET_S = 1700.0  # the action's timeout is 1800 s: leave time to answer
LOCK_TIMEOUT_S = 600.0
LOG_TAIL_LINES = 30
APPLIED_KEY = "deploy.applied"
RUNNING = {"online", "launching", "waiting restart"}
CRASH_RESTARTS = 2

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
                    }
                # Applied, but something is not running any more (PM2's daemon was killed,
                # the server rebooted): bring it back from the releases on disk.
                self.emit(f"desired state version {version} is applied but not all of it runs")
            self.emit(
                f"applying desired state version {version}"
                + (f" (deployment {document['deployment']})" if document.get("deployment") else "")
            )
            outcomes: dict[str, dict[str, Any]] = {}
            for entry in entries:
                outcome = self._apply_app(entry)
                outcomes[str(outcome.pop("name"))] = outcome
            for name in sorted(self._deployed() - set(outcomes)):
                outcomes[name] = self._remove(name)
            changed = any(o["status"] != "unchanged" for o in outcomes.values())
            if all(o["status"] != "failed" for o in outcomes.values()):
                self._record_applied(version, digest)
            return {"version": version, "hash": digest, "changed": changed, "apps": outcomes}

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
            process = state.get("process")
            if process is None:
                continue
            runtime_name = str(state.get("runtime"))
            if runtime_name not in listings:
                runtime = self.runtimes.get(runtime_name)
                if runtime is None:
                    return False
                listings[runtime_name] = {p.name for p in runtime.status("") if p.status in RUNNING}
            if process not in listings[runtime_name]:
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
            "log_tail": [line[:500] for line in tail[-LOG_TAIL_LINES:]],
        }
        if old is not None:
            failed["serving"] = {"release": old.get("release"), "port": old.get("port")}
        return failed

    def _running(self, state: dict[str, Any]) -> bool:
        process = state.get("process")
        if process is None:
            return True  # a static site: nothing to run
        runtime = self.runtimes.get(str(state.get("runtime")))
        if runtime is None:
            return False
        return any(p.name == process and p.status in RUNNING for p in runtime.status(process))

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
        release_dir = app.release(spec.release)
        old_process = old.get("process") if old else None
        process: str | None = None
        port: int | None = None
        stopped_old = False
        try:
            if plan.start is not None:
                port, stopped_old = self._port(spec, old, runtime)
                env = app_env(release_dir, spec.env, port)
                argv = _program(plan.start, release_dir, env, port)
                process = naming.process_name(spec.name, spec.release)
                if process == old_process:  # the same release again (new settings)
                    process += "-b"
                self.emit(f"starting {' '.join(argv)} on port {port}", spec.name, "start")
                runtime.start(ReleaseProcess(process, argv, release_dir, env))
                self._wait_healthy(spec, runtime, process, port)
            elif spec.domains:
                self.emit("static site: the proxy serves the release directory", spec.name, "start")
            else:
                self.emit("static site without domains: nothing serves it", spec.name, "start")
            self._switch_proxy(spec, old, port, None if plan.start else release_dir)
        except BaseException:
            if process is not None:
                self.emit(f"stopping the new release {spec.release}", spec.name, "rollback")
                with contextlib.suppress(RuntimeFailure):
                    runtime.delete(process)
            if stopped_old and old_process:
                self.emit(
                    f"starting the previous release {old_process} again", spec.name, "rollback"
                )
                with contextlib.suppress(RuntimeFailure):
                    runtime.restart(old_process)
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
                "process": process,
                "port": port,
                "static_root": None if plan.start else str(release_dir),
                "domains": list(spec.domains),
                "tls": spec.tls,
                "digest": spec.digest,
                "env_keys": sorted(spec.env),
                "previous": old.get("release") if old else None,
                "history": history[:100],
                "updated_at": now_ms(),
            }
        )
        self._retire(spec, runtime, old, process, drained=not stopped_old)
        protect = {spec.release} | ({old["release"]} if old and old.get("release") else set())
        removed = app.prune(spec.keep_releases, history, protect)
        if removed:
            self.emit(f"removed old releases: {', '.join(removed)}", spec.name, "prune")
        return {
            "status": "live",
            "release": spec.release,
            "commit": spec.commit,
            "port": port,
            "process": process,
        }

    def _prepare(self, spec: AppSpec, app: AppDir) -> Plan:
        """The built release: reused when it exists, else fetched, checked out and built."""
        marker = app.built(spec.release)
        if marker is not None and marker.get("commit") == spec.commit:
            self.emit(
                f"release {spec.release} is already built: reusing it (no fetch, no build)",
                spec.name,
                "checkout",
            )
            plan = Plan.from_dict(marker["plan"])
            return plan if spec.start is None else replace(plan, start=spec.start)
        release_dir = app.release(spec.release)
        if marker is not None and app.current_release() == spec.release:
            raise DeployError(
                f"release {spec.release} is running with commit {str(marker.get('commit'))[:12]}; "
                "a release id names one commit: deploy this one under a new release id"
            )
        app.forget(spec.release)  # a leftover of an interrupted build, or another commit
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
            Builder(
                release_dir,
                app_env(release_dir, spec.env, spec.port),
                self.settings.cache_dir,
                self.settings.python,
                lambda line: self.emit(line, spec.name, "build"),
                self.deadline,
            ).build(plan)
        except BaseException:
            app.forget(spec.release)
            raise
        app.mark_built(
            spec.release, {"commit": spec.commit, "plan": plan.as_dict(), "built_at": now_ms()}
        )
        return plan

    def _port(
        self, spec: AppSpec, old: dict[str, Any] | None, runtime: Runtime
    ) -> tuple[int, bool]:
        """The new release's port, and whether the old release had to stop to free it."""
        if spec.port is None:
            reserved = self._reserved_ports()
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
        """Ports recorded for running releases: kept even while one restarts."""
        reserved = set()
        for path in self.settings.apps_dir.glob("*/state.json"):
            state = AppDir(self.settings.apps_dir, path.parent.name).state() or {}
            if state.get("status") == "live" and isinstance(state.get("port"), int):
                reserved.add(state["port"])
        return reserved

    def _wait_healthy(self, spec: AppSpec, runtime: Runtime, process: str, port: int) -> None:
        what = f"GET {spec.health.path}" if spec.health.path else "a connection"
        self.emit(f"health check: waiting for {what} on port {port}", spec.name, "health")

        def crashed() -> str | None:
            found = [p for p in runtime.status(process) if p.name == process]
            if not found:
                return "process disappeared"
            info = found[0]
            if info.status in ("errored", "stopped", "stopping"):
                return f"crashed on start (status {info.status}, restarted {info.restarts} times)"
            if info.restarts >= CRASH_RESTARTS:
                return f"crashed on start (restarted {info.restarts} times)"
            return None

        try:
            wait_healthy(
                port,
                spec.health,
                crashed,
                lambda line: self.emit(line, spec.name, "health"),
            )
        except DeployError as exc:
            tail = runtime.logs(process, LOG_TAIL_LINES)
            for line in tail[-10:]:
                self.emit(f"app: {line}", spec.name, "health")
            raise DeployError(exc.reason, tail) from None
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

    def _switch_proxy(
        self,
        spec: AppSpec,
        old: dict[str, Any] | None,
        port: int | None,
        static_root: Path | None,
    ) -> None:
        if spec.domains:
            self.emit(f"switching the proxy: {', '.join(spec.domains)}", spec.name, "proxy")
            try:
                self.proxy.switch(
                    spec.name,
                    spec.domains,
                    spec.release,
                    tls=spec.tls,
                    port=port,
                    static_root=static_root,
                )
            except ProxySwitchError as exc:
                raise DeployError(f"proxy: {exc}") from exc
            self.emit("the proxy serves the new release", spec.name, "proxy")
        elif old and old.get("domains"):
            self.emit("no domains any more: removing the proxy configuration", spec.name, "proxy")
            try:
                self.proxy.remove(spec.name)
            except ProxySwitchError as exc:
                raise DeployError(f"proxy: {exc}") from exc

    def _retire(
        self,
        spec: AppSpec,
        runtime: Runtime,
        old: dict[str, Any] | None,
        process: str | None,
        drained: bool,
    ) -> None:
        """Stop the old release (after the drain), and anything else left of this app."""
        old = old or {}
        old_process = old.get("process")
        old_runtime = self.runtimes.get(str(old.get("runtime")))
        if old_process and old_process != process:
            if drained and self.settings.drain_seconds > 0:
                self.emit(
                    f"draining the old release for {self.settings.drain_seconds:g} s",
                    spec.name,
                    "stop",
                )
                time.sleep(self.settings.drain_seconds)
            self.emit(f"stopping the old release {old.get('release')}", spec.name, "stop")
            with contextlib.suppress(RuntimeFailure):
                (old_runtime or runtime).delete(str(old_process))
        # Processes of this app that nothing points at (an interrupted deploy's, say).
        for info in runtime.status(spec.process_prefix):
            if info.name != process:
                with contextlib.suppress(RuntimeFailure):
                    runtime.delete(info.name)

    # -- removal -------------------------------------------------------------------------

    def _remove(self, name: str) -> dict[str, Any]:
        check_app_name(name)
        app = AppDir(self.settings.apps_dir, name)
        state = app.state() or {}
        self.emit("not in the desired state any more: removing it", name, "remove")
        try:
            if state.get("domains"):
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
    start = " ".join(plan.start) if plan.start else "none (static files)"
    return f"{plan.kind} app: build: {'; '.join(steps) or 'nothing'}; start: {start}"


def _program(
    start: tuple[str, ...], release: Path, env: Mapping[str, str], port: int
) -> tuple[str, ...]:
    """The start argv with $PORT filled in and argv[0] an absolute path (PM2 gets no shell
    to do either)."""
    argv = [a.replace("${PORT}", str(port)).replace("$PORT", str(port)) for a in start]
    program = argv[0]
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else release / program
        found = str(path) if os.access(path, os.X_OK) and path.is_file() else None
    else:
        found = shutil.which(program, path=env.get("PATH"))
    if found is None:
        raise DeployError(f"start command not found: {program}")
    return (found, *argv[1:])
