"""The typed interfaces control-plane plugins implement, each registered through a hook of
serverflow/hookspecs.py, and `hookimpl`, the marker those hook implementations carry.

Control-plane objects describe and plan; the work on a server happens in agent actions
(serverflow_contract.actions.ActionSpec) that the control plane sends as signed commands.
`ActionCall` is that hand-off: the name of an agent action and its parameters. A plugin
that only plans needs nothing but this module, so it installs on servers without the
control plane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pluggy

hookimpl = pluggy.HookimplMarker("serverflow")


@dataclass(frozen=True)
class ActionCall:
    """An agent action to run on a server, with its parameters."""

    action: str
    params: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Runtime(Protocol):
    """The control-plane side of a process runtime (PM2, Docker...).

    A deploy runs releases through the same plugin's agent side (serverflow_contract.
    runtime.Runtime, used by the agent's `state.apply`). What the control plane itself asks
    of a runtime are agent actions that plugin registers on the agent, planned here.
    """

    name: str
    description: str

    def restart(self, app: str, release_id: str) -> ActionCall:
        """The agent action that restarts one release's process in place."""


@dataclass(frozen=True)
class DnsRecord:
    name: str
    type: str
    content: str
    ttl: int = 300


@runtime_checkable
class DnsZones(Protocol):
    """An open connection to one DNS account."""

    async def list_zones(self) -> list[str]: ...
    async def list_records(self, zone: str) -> list[DnsRecord]: ...
    async def upsert_record(self, zone: str, record: DnsRecord) -> None: ...
    async def delete_record(self, zone: str, name: str, type: str) -> None: ...


@runtime_checkable
class DnsProvider(Protocol):
    """A DNS service (Cloudflare, PowerDNS); `settings_schema` describes its credentials."""

    name: str
    description: str
    settings_schema: Mapping[str, Any]

    def open(self, settings: Mapping[str, Any]) -> DnsZones: ...


@dataclass(frozen=True)
class Snapshot:
    id: str
    size: int
    created_at: str


@runtime_checkable
class BackupTarget(Protocol):
    """Where backups go (S3, rsync). Retention is the core's job, not the target's."""

    name: str
    description: str
    settings_schema: Mapping[str, Any]

    def put(self, settings: Mapping[str, Any], snapshot_id: str, path: str) -> ActionCall: ...
    def get(self, settings: Mapping[str, Any], snapshot_id: str, path: str) -> ActionCall: ...
    def list(self, settings: Mapping[str, Any], prefix: str) -> ActionCall: ...
    def delete(self, settings: Mapping[str, Any], snapshot_id: str) -> ActionCall: ...


@dataclass(frozen=True)
class VirtualServer:
    id: str
    name: str
    ipv4: str | None
    status: str


@runtime_checkable
class ServerProvider(Protocol):
    """A cloud that creates VPSes (Hetzner, DigitalOcean...) whose cloud-init installs the agent."""

    name: str
    description: str
    settings_schema: Mapping[str, Any]

    async def create(
        self, settings: Mapping[str, Any], name: str, size: str, region: str, cloud_init: str
    ) -> VirtualServer: ...
    async def list(self, settings: Mapping[str, Any]) -> list[VirtualServer]: ...
    async def destroy(self, settings: Mapping[str, Any], server_id: str) -> None: ...


@dataclass(frozen=True)
class CronJob:
    name: str
    schedule: str
    command: Sequence[str]
    app: str | None = None


@runtime_checkable
class CronBackend(Protocol):
    """Where scheduled jobs live on a server (e.g. /etc/cron.d) and how their runs are read."""

    name: str
    description: str

    def apply(self, jobs: Sequence[CronJob]) -> ActionCall: ...
    def history(self, job: str, limit: int) -> ActionCall: ...


@runtime_checkable
class Template(Protocol):
    """A one-click app definition for the marketplace."""

    name: str
    description: str
    params_schema: Mapping[str, Any]

    def render(self, params: Mapping[str, Any]) -> Mapping[str, Any]: ...


@runtime_checkable
class DashboardPanel(Protocol):
    """A panel a plugin adds to the dashboard; `render` returns an HTML fragment."""

    name: str
    title: str

    async def render(self, context: Mapping[str, Any]) -> str: ...
