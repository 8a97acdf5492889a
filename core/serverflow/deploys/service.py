"""Deployments: resolve the commit, send the server's new desired state, follow the agent.

A deployment runs as a background task of the control plane (the HTTP request that starts
it returns at once); its log lines (the agent's progress plus our own steps) are stored
and published on the event bus as `deployment.log`, its end as `deployment.finished`.
One deployment at a time per server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serverflow.agents.hub import AgentHub
from serverflow.deploys import addresses
from serverflow.deploys.desired import (
    APPLY_ACTION,
    RESOLVE_ACTION,
    app_entry,
    document,
    release_id,
)
from serverflow.errors import Conflict, NotFound
from serverflow.events import EventBus, LiveEvent, record
from serverflow.keys import Cipher
from serverflow.models import (
    App,
    AppServer,
    CommandStatus,
    Deployment,
    DeploymentLog,
    DeploymentStatus,
    Server,
    ServerState,
)
from serverflow.tenancy import scoped
from serverflow_contract.desired import check_address
from serverflow_contract.naming import InvalidName

log = logging.getLogger(__name__)

APPLY_TIMEOUT_S = 1800.0
RESOLVE_TIMEOUT_S = 90.0
MAX_LOG_LINES = 20_000
FINAL = {DeploymentStatus.LIVE, DeploymentStatus.FAILED, DeploymentStatus.SUPERSEDED}


class DeployFailed(Exception):
    """A step failed; the message is the deployment's reason."""


def decrypt_env(cipher: Cipher, token: str) -> dict[str, str]:
    if not token:
        return {}
    env: dict[str, str] = json.loads(cipher.decrypt(token))
    return env


def encrypt_env(cipher: Cipher, env: dict[str, str]) -> str:
    return cipher.encrypt(json.dumps(env, sort_keys=True)) if env else ""


@dataclass
class _LogBuffer:
    org_id: uuid.UUID
    deployment_id: uuid.UUID
    seq: int = 0
    pending: list[DeploymentLog] = field(default_factory=list)
    closed_at: float | None = None  # finished: late lines are dropped, then forgotten


class Deployer:
    def __init__(self, hub: AgentHub, bus: EventBus, cipher: Cipher) -> None:
        self.hub = hub
        self.bus = bus
        self.cipher = cipher
        self._locks: dict[uuid.UUID, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._logs: dict[uuid.UUID, _LogBuffer] = {}
        self._flusher: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def resync(self, org_id: uuid.UUID, server: Server) -> None:
        """Send a (re)connected server the apps it should run: after a reboot, or a
        `pm2 kill`, the agent restarts them from the releases it kept, without building."""
        async with scoped(org_id):
            has_live = await AppServer.filter(
                server_id=server.id, live_deployment_id__isnull=False
            ).exists()
        if not has_live:
            return
        lock = self._locks[server.id]
        if lock.locked():
            return  # a deployment is running: it sends the whole document itself
        try:
            async with lock:
                doc = await self._document(org_id, server, None, None)
                command = await self.hub.run(
                    org_id, server, APPLY_ACTION, "change", doc, "system:resync", APPLY_TIMEOUT_S
                )
            if command.status == CommandStatus.OK:
                async with scoped(org_id):
                    await ServerState.filter(server_id=server.id).update(applied_hash=doc["hash"])
                await self._note_address(org_id, server, command.output)
            else:
                log.warning(
                    "resync of %s failed: %s %s", server.name, command.code, command.message
                )
        except Exception:
            log.exception("resync of %s failed", server.name)

    async def start(self) -> None:
        """Deployments that were running when the control plane stopped cannot be followed."""
        from serverflow.models import Organization

        for org in await Organization.all():
            async with scoped(org.id):
                await Deployment.filter(
                    status__in=[DeploymentStatus.QUEUED, DeploymentStatus.RUNNING]
                ).update(
                    status=DeploymentStatus.FAILED,
                    finished_at=datetime.now(UTC),
                    reason="interrupted: the control plane restarted during the deploy",
                )
        self._flusher = asyncio.create_task(self._flush_loop())
        self.hub.on_connect = self.resync

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._flusher is not None:
            self._flusher.cancel()
        await self._flush_logs()

    # -- starting deployments --------------------------------------------------------

    async def deploy(
        self,
        org_id: uuid.UUID,
        app: App,
        triggered_by: str,
        commit: str | None = None,
        branch: str | None = None,
    ) -> list[Deployment]:
        """Queue a deployment of `app` on each of its servers."""
        placements = await self._placements(org_id, app)
        env = await self._current_env(org_id, app)
        created = []
        for placement in placements:
            dep = await self._queue(
                org_id,
                app,
                placement.server_id,
                kind="deploy",
                branch=branch or app.branch,
                commit_sha=commit,
                triggered_by=triggered_by,
                env_encrypted=encrypt_env(self.cipher, env),
                spec=self._spec(app),
            )
            created.append(dep)
        return created

    async def _queue(
        self, org_id: uuid.UUID, app: App, server_id: uuid.UUID, **fields: Any
    ) -> Deployment:
        """Store the next deployment of `app` on a server and start it (outside any `scoped`
        block: the task must not inherit its transaction)."""
        async with scoped(org_id):
            number = await self._next_number(app.id, server_id)
            dep = await Deployment.create(
                app_id=app.id, server_id=server_id, number=number, **fields
            )
        self._spawn(self._run(org_id, dep))
        return dep

    async def config(self, org_id: uuid.UUID, app: App, triggered_by: str) -> list[Deployment]:
        """A config release on each server where `app` is live: the live release's commit,
        branch and settings (never the branch's head now) with the app's env and formation
        now; the agent reuses the build of that commit. Servers where nothing is live get
        the change at their next deploy."""
        async with scoped(org_id):
            placements = await AppServer.filter(app_id=app.id, live_deployment_id__isnull=False)
            live_ids = [p.live_deployment_id for p in placements]
            live = {d.id: d for d in await Deployment.filter(id__in=live_ids)} if live_ids else {}
        env = await self._current_env(org_id, app)
        created = []
        for placement in placements:
            base = live.get(placement.live_deployment_id) if placement.live_deployment_id else None
            if base is None or not base.commit_sha or not base.spec:
                continue
            dep = await self._queue(
                org_id,
                app,
                placement.server_id,
                kind="config",
                branch=base.branch,
                commit_sha=base.commit_sha,
                triggered_by=triggered_by,
                env_encrypted=encrypt_env(self.cipher, env),
                spec=self._config_spec(base, app.formation),
            )
            created.append(dep)
        return created

    @staticmethod
    def _config_spec(live: Deployment, formation: dict[str, int] | None) -> dict[str, Any]:
        spec = {k: v for k, v in (live.spec or {}).items() if k not in ("commit", "release")}
        return {**spec, "formation": dict(formation or {})}

    async def rollback(
        self, org_id: uuid.UUID, app: App, triggered_by: str, release: str | None = None
    ) -> list[Deployment]:
        """Bring back an earlier release (the previous one unless named) on each server."""
        placements = await self._placements(org_id, app)
        created = []
        for placement in placements:
            async with scoped(org_id):
                target = await self._rollback_target(app, placement, release)
            dep = await self._queue(
                org_id,
                app,
                placement.server_id,
                kind="rollback",
                branch=target.branch,
                commit_sha=target.commit_sha,
                release=target.release,
                spec=target.spec,
                triggered_by=triggered_by,
                env_encrypted=target.env_encrypted,
            )
            created.append(dep)
        return created

    async def _placements(self, org_id: uuid.UUID, app: App) -> list[AppServer]:
        async with scoped(org_id):
            placements = await AppServer.filter(app_id=app.id)
        if not placements:
            raise Conflict(f"{app.name} is not placed on any server", code="APP003")
        return list(placements)

    async def _current_env(self, org_id: uuid.UUID, app: App) -> dict[str, str]:
        return decrypt_env(self.cipher, app.env_encrypted)

    async def remove(self, org_id: uuid.UUID, app: App, triggered_by: str) -> None:
        """Tell every server of `app` to stop it and drop its proxy configuration."""
        async with scoped(org_id):
            placements = await AppServer.filter(app_id=app.id)
        for placement in placements:
            async with scoped(org_id):
                server = await Server.get(id=placement.server_id)
            async with self._locks[server.id]:
                doc = await self._document(org_id, server, None, None, drop=app.id)
                if self.hub.connected(server):
                    await self.hub.run(
                        org_id, server, APPLY_ACTION, "change", doc, triggered_by, APPLY_TIMEOUT_S
                    )

    async def _next_number(self, app_id: uuid.UUID, server_id: uuid.UUID) -> int:
        last = (
            await Deployment.filter(app_id=app_id, server_id=server_id).order_by("-number").first()
        )
        return (last.number if last else 0) + 1

    async def _rollback_target(
        self, app: App, placement: AppServer, release: str | None
    ) -> Deployment:
        query = Deployment.filter(
            app_id=app.id,
            server_id=placement.server_id,
            release__isnull=False,
            status__in=[DeploymentStatus.LIVE, DeploymentStatus.SUPERSEDED],
        )
        if release is not None:
            target = await query.filter(release=release).order_by("-number").first()
            if target is None:
                raise NotFound(
                    f"{app.name} has no release {release!r} that was ever live", code="DEP002"
                )
            return target
        live = placement.live_deployment_id
        earlier = await query.exclude(id=live).order_by("-number") if live else []
        current = await Deployment.get_or_none(id=live) if live else None
        for candidate in earlier:
            if current is None or candidate.release != current.release:
                return candidate
        raise Conflict(f"{app.name} has no earlier release to roll back to", code="DEP003")

    @staticmethod
    def _spec(app: App) -> dict[str, Any]:
        return {
            "name": app.name,
            "runtime": app.runtime,
            "repo": app.repo_url,
            "build": app.build_commands,
            "start": app.start_command,
            "port": app.port,
            "health": {"path": app.health_path, "timeout_s": app.health_timeout_s},
            "domains": list(app.domains or []),
            "tls": app.tls,
            "keep_releases": app.keep_releases,
            "formation": dict(app.formation or {}),
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running one -------------------------------------------------------------------

    async def _run(self, org_id: uuid.UUID, dep: Deployment) -> None:
        started = time.monotonic()
        status, reason = DeploymentStatus.FAILED, None
        async with scoped(org_id):
            server = await Server.get(id=dep.server_id)
            app = await App.get(id=dep.app_id)
        lock = self._locks[server.id]
        if lock.locked():
            self.line(org_id, dep.id, "waiting for the deployment running on this server")
        try:
            async with lock:
                await self._set(
                    org_id, dep, status=DeploymentStatus.RUNNING, started_at=datetime.now(UTC)
                )
                await record(
                    self.bus,
                    "deployment.started",
                    org_id,
                    server.id,
                    {"deployment_id": str(dep.id), "app": app.name, "kind": dep.kind},
                )
                status, reason = await self._steps(org_id, dep, app, server)
        except DeployFailed as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            reason = "interrupted: the control plane is shutting down"
            raise
        except Exception as exc:
            log.exception("deployment %s crashed", dep.id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            elapsed = int((time.monotonic() - started) * 1000)
            self.line(
                org_id,
                dep.id,
                f"deployment {status}" + (f": {reason}" if reason else ""),
                stage="done",
            )
            await asyncio.shield(self._finish(org_id, dep, app, server, status, reason, elapsed))

    async def _steps(
        self, org_id: uuid.UUID, dep: Deployment, app: App, server: Server
    ) -> tuple[DeploymentStatus, str | None]:
        who = f"deployment #{dep.number} of {app.name} on {server.name}"
        self.line(org_id, dep.id, f"{who}, triggered by {dep.triggered_by}")
        if dep.kind == "config":
            await self._rebase_config(org_id, dep, app, server)
        commit = dep.commit_sha
        if commit is None:
            commit = await self._resolve(org_id, dep, app, server)
        self.line(
            org_id,
            dep.id,
            f"commit {commit}" + (f" (branch {dep.branch})" if dep.branch else ""),
            stage="resolve",
        )
        release = dep.release or release_id(dep.number, commit)
        spec = {**(dep.spec or self._spec(app)), "commit": commit, "release": release}
        spec = await self._addressed(org_id, dep, server, spec)
        await self._set(org_id, dep, commit_sha=commit, release=release, spec=spec)

        doc = await self._document(org_id, server, dep, spec)
        self.line(
            org_id,
            dep.id,
            f"sending desired state v{doc['version']} to {server.name}",
            stage="apply",
        )

        def progress(command_id: str, data: dict[str, Any]) -> None:
            if data.get("app") in (None, app.name):
                self.line(
                    org_id, dep.id, str(data.get("line", "")), stage=str(data.get("stage") or "")
                )

        command = await self.hub.run(
            org_id,
            server,
            APPLY_ACTION,
            "change",
            doc,
            dep.triggered_by,
            APPLY_TIMEOUT_S,
            on_progress=progress,
        )
        await self._set(org_id, dep, command_id=command.id)
        if command.status != CommandStatus.OK:
            raise DeployFailed(f"{command.code or command.status}: {command.message or ''}")
        async with scoped(org_id):
            await ServerState.filter(server_id=server.id).update(applied_hash=doc["hash"])
        await self._note_address(org_id, server, command.output)
        outcome = (command.output or {}).get("apps", {}).get(app.name, {})
        for line in outcome.get("log_tail") or []:
            self.line(org_id, dep.id, str(line), stage="log")
        if outcome.get("status") in ("live", "unchanged"):
            served = spec.get("public_port") is not None and (
                outcome.get("public_port") == spec["public_port"]
            )
            async with scoped(org_id):
                await AppServer.filter(app_id=app.id, server_id=server.id).update(
                    public_port_served=served
                )
            return DeploymentStatus.LIVE, None
        return DeploymentStatus.FAILED, str(outcome.get("reason") or "the agent reported failure")

    async def _addressed(
        self, org_id: uuid.UUID, dep: Deployment, server: Server, spec: dict[str, Any]
    ) -> dict[str, Any]:
        """The spec with the app's public port on `server` when it has no domain: the port
        its first such deploy there was given, whatever release this one runs."""
        spec = {k: v for k, v in spec.items() if k != "public_port"}
        if spec.get("domains"):
            return spec
        try:
            async with scoped(org_id):
                placement = await AppServer.get(app_id=dep.app_id, server_id=server.id)
                port = await addresses.public_port(placement, self.hub.settings.app_ports)
        except addresses.NoPublicPort as exc:
            raise DeployFailed(str(exc)) from None
        return {**spec, "public_port": port}

    async def _note_address(self, org_id: uuid.UUID, server: Server, output: Any) -> None:
        """Keep the address the agent says its server is reached at (the URLs' host)."""
        reported = output.get("address") if isinstance(output, dict) else None
        try:
            address = check_address(reported) if reported else None
        except InvalidName:
            log.warning("%s reported an invalid address %r", server.name, str(reported)[:80])
            return
        if address and address != server.address:
            async with scoped(org_id):
                await Server.filter(id=server.id).update(address=address)
            server.address = address

    async def _resolve(self, org_id: uuid.UUID, dep: Deployment, app: App, server: Server) -> str:
        """The commit to deploy: the head of the deployment's branch, or of the repository's
        default branch (recorded on the deployment, and on the app as its default)."""
        params = {"repo": app.repo_url}
        if dep.branch:
            params["branch"] = dep.branch
            asked = f"branch {dep.branch}"
        else:
            asked = "the default branch"
        self.line(org_id, dep.id, f"resolving {asked} of {app.repo_url}", stage="resolve")
        resolved = await self.hub.run(
            org_id, server, RESOLVE_ACTION, "read", params, dep.triggered_by, RESOLVE_TIMEOUT_S
        )
        if resolved.status != CommandStatus.OK:
            raise DeployFailed(resolved.message or f"could not resolve {asked}")
        output = resolved.output if isinstance(resolved.output, dict) else {}
        if not dep.branch:
            branch = str(output["branch"])
            self.line(org_id, dep.id, f"the default branch is {branch}", stage="resolve")
            await self._set(org_id, dep, branch=branch)
            async with scoped(org_id):
                await App.filter(id=app.id).update(default_branch=branch)
        return str(output["commit"])

    async def _rebase_config(
        self, org_id: uuid.UUID, dep: Deployment, app: App, server: Server
    ) -> None:
        """A config release applies to the release live when it runs: another deployment
        may have gone live since it was queued."""
        async with scoped(org_id):
            placement = await AppServer.get_or_none(app_id=app.id, server_id=server.id)
            live = (
                await Deployment.get_or_none(id=placement.live_deployment_id)
                if placement is not None and placement.live_deployment_id
                else None
            )
        if live is None or not live.commit_sha or not live.spec:
            raise DeployFailed(f"nothing is live on {server.name} any more to reconfigure")
        formation = (dep.spec or {}).get("formation")
        await self._set(
            org_id,
            dep,
            commit_sha=live.commit_sha,
            branch=live.branch,
            spec=self._config_spec(live, formation),
        )
        self.line(
            org_id,
            dep.id,
            f"config release of {live.release}: its commit and settings, the new environment "
            "and formation",
            stage="resolve",
        )

    async def _document(
        self,
        org_id: uuid.UUID,
        server: Server,
        dep: Deployment | None,
        spec: dict[str, Any] | None,
        drop: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        """The server's next document: its live apps, with this deployment's app replaced
        (or the app `drop` left out)."""
        replaced = dep.app_id if dep is not None else drop
        async with scoped(org_id):
            placements = await AppServer.filter(server_id=server.id)
            live_ids = [
                p.live_deployment_id
                for p in placements
                if p.live_deployment_id and p.app_id != replaced
            ]
            live = await Deployment.filter(id__in=live_ids) if live_ids else []
            entries = [
                app_entry(d.spec, decrypt_env(self.cipher, d.env_encrypted))
                for d in live
                if d.spec and d.spec.get("release")
            ]
            if dep is not None and spec is not None:
                entries.append(app_entry(spec, decrypt_env(self.cipher, dep.env_encrypted)))
            state, _ = await ServerState.get_or_create(server_id=server.id)
            state.version += 1
            doc = document(state.version, str(dep.id) if dep else "", entries)
            state.hash = doc["hash"]
            await state.save(update_fields=["version", "hash"])
        return doc

    async def _set(self, org_id: uuid.UUID, dep: Deployment, **values: Any) -> None:
        for name, value in values.items():
            setattr(dep, name, value)
        async with scoped(org_id):
            await Deployment.filter(id=dep.id).update(**values)

    async def _finish(
        self,
        org_id: uuid.UUID,
        dep: Deployment,
        app: App,
        server: Server,
        status: DeploymentStatus,
        reason: str | None,
        elapsed_ms: int,
    ) -> None:
        async with scoped(org_id):
            if status == DeploymentStatus.LIVE:
                placement = await AppServer.get(app_id=app.id, server_id=server.id)
                if placement.live_deployment_id and placement.live_deployment_id != dep.id:
                    await Deployment.filter(id=placement.live_deployment_id).update(
                        status=DeploymentStatus.SUPERSEDED
                    )
                await AppServer.filter(id=placement.id).update(live_deployment_id=dep.id)
            await Deployment.filter(id=dep.id).update(
                status=status, reason=reason, finished_at=datetime.now(UTC), duration_ms=elapsed_ms
            )
        await self._flush_logs()
        if dep.id in self._logs:
            self._logs[dep.id].closed_at = time.monotonic()
        await record(
            self.bus,
            "deployment.finished",
            org_id,
            server.id,
            {
                "deployment_id": str(dep.id),
                "app": app.name,
                "status": str(status),
                "reason": reason,
                "release": dep.release,
                "duration_ms": elapsed_ms,
            },
        )

    # -- logs --------------------------------------------------------------------------

    def line(self, org_id: uuid.UUID, deployment_id: uuid.UUID, text: str, stage: str = "") -> None:
        """Append one line to a deployment's log (stored in batches, published at once)."""
        buffer = self._logs.get(deployment_id)
        if buffer is None:
            buffer = self._logs[deployment_id] = _LogBuffer(org_id, deployment_id)
        if buffer.seq >= MAX_LOG_LINES or buffer.closed_at is not None:
            return
        buffer.seq += 1
        now = datetime.now(UTC)
        text = text[:4000]
        buffer.pending.append(
            DeploymentLog(
                organization_id=org_id,
                deployment_id=deployment_id,
                seq=buffer.seq,
                at=now,
                stage=stage[:40],
                line=text,
            )
        )
        self.bus.publish(
            LiveEvent(
                "deployment.log",
                org_id,
                None,
                {
                    "deployment_id": str(deployment_id),
                    "seq": buffer.seq,
                    "stage": stage,
                    "line": text,
                    "at": now.isoformat(),
                },
            )
        )

    async def _flush_logs(self) -> None:
        now = time.monotonic()
        for key, buffer in list(self._logs.items()):
            pending, buffer.pending = buffer.pending, []
            if pending:
                async with scoped(buffer.org_id):
                    await DeploymentLog.bulk_create(pending)
            if buffer.closed_at is not None and now - buffer.closed_at > 60:
                del self._logs[key]

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            try:
                await self._flush_logs()
            except Exception:
                log.exception("storing deployment logs failed")


def is_final(status: str) -> bool:
    return DeploymentStatus(status) in FINAL


def deployment_ids(deployments: Iterable[Deployment]) -> list[str]:
    return [str(d.id) for d in deployments]
