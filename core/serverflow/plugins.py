"""The control plane's plugins: entry points of the `serverflow` group, and their registries.

Plugins can be disabled, enabled and installed while the control plane runs (the
dashboard's marketplace): disabling unregisters the plugin's hooks and removes what it
registered; enabling loads it and collects its registrations again. A blueprint cannot be
added to an app that is already serving, so a plugin bringing new routes needs a restart.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from quart import Blueprint

from serverflow import hookspecs
from serverflow_contract import interfaces
from serverflow_contract.pluginhost import PluginHost, PluginInfo, Registry

GROUP = "serverflow"

# hook name -> (registry name, interface the registered objects must implement)
REGISTRY_HOOKS: dict[str, tuple[str, type | None]] = {
    "register_runtimes": ("runtimes", interfaces.Runtime),
    "register_dns_providers": ("dns_providers", interfaces.DnsProvider),
    "register_backup_targets": ("backup_targets", interfaces.BackupTarget),
    "register_server_providers": ("server_providers", interfaces.ServerProvider),
    "register_cron_backends": ("cron_backends", interfaces.CronBackend),
    "register_templates": ("templates", interfaces.Template),
    "register_dashboard_panels": ("dashboard_panels", interfaces.DashboardPanel),
}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class ControlPlaneHost(PluginHost):
    """The plugin host, plus switching plugins on and off at run time."""

    def know(self, info: PluginInfo) -> None:
        """List a plugin without importing it (installed while disabled)."""
        self._info[info.name] = info

    def activate(self, plugin: object, info: PluginInfo) -> None:
        """Register a loaded plugin object under an existing (or new) listing."""
        info.enabled, info.error = True, None
        self._info[info.name] = info
        self._add(plugin, info)

    def deactivate(self, name: str) -> None:
        info = self._info[name]
        info.enabled = False
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        for registry in self._registries:
            registry.drop_plugin(name)


@dataclass
class Activation:
    """What enabling or installing one plugin did."""

    name: str
    error: str | None = None
    enabled: bool = True
    blueprints: list[str] = field(default_factory=list)
    reloaded: bool = False  # the plugin's code was already imported: a restart loads the new one


class Plugins:
    """Loads plugins and exposes what they registered."""

    def __init__(self, disabled: Iterable[str] = (), load: bool = True) -> None:
        self.host = ControlPlaneHost(GROUP, hookspecs, disabled=disabled)
        # The operator's SERVERFLOW_DISABLED_PLUGINS: the dashboard cannot override it.
        self.configured_off = frozenset(self.host.disabled)
        self.registries: dict[str, Registry[Any]] = {
            name: Registry(name.rstrip("s").replace("_", " "), iface)
            for name, iface in REGISTRY_HOOKS.values()
        }
        self.blueprints: Registry[Blueprint] = Registry("blueprint", Blueprint)
        # Blueprints ever registered, by identity, with their plugin: a disabled plugin's
        # routes stay mounted in the app, and the dashboard refuses requests to them.
        self._blueprint_owner: dict[int, str] = {}
        self._objects: dict[str, object] = {}  # plugin objects of disabled plugins
        self.pending_restart: set[str] = set()
        if load:
            self.host.load_entrypoints()
            self.collect()

    def collect(self) -> None:
        for hook, (name, _) in REGISTRY_HOOKS.items():
            self.host.collect(hook, self.registries[name])
        self.host.collect("register_blueprints", self.blueprints)
        self._note_blueprints()

    @property
    def runtimes(self) -> Registry[interfaces.Runtime]:
        return self.registries["runtimes"]

    def _all_registries(self) -> list[Registry[Any]]:
        return [*self.registries.values(), self.blueprints]

    def _note_blueprints(self) -> None:
        for name in self.blueprints.names():
            blueprint = self.blueprints.get(name)
            self._blueprint_owner[id(blueprint)] = self.blueprints.owner(name)

    def blueprint_owner(self, blueprint: object) -> str | None:
        """The plugin that registered this blueprint object, if a plugin did."""
        return self._blueprint_owner.get(id(blueprint))

    # -- reporting -----------------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        """Every plugin with its status and what it provides (CLI, API and dashboard)."""
        return [
            {
                **info.as_dict(),
                "provides": self.provided(info.name),
                "disabled_by_config": info.name in self.configured_off,
                "restart_required": info.name in self.pending_restart,
            }
            for info in self.host.plugins()
        ]

    def provided(self, plugin: str) -> dict[str, list[str]]:
        """What each registry holds from one plugin, e.g. {"runtimes": ["pm2"]}."""
        out: dict[str, list[str]] = {}
        for name, registry in self.registries.items():
            names = [n for n in registry.names() if registry.owner(n) == plugin]
            if names:
                out[name] = names
        return out

    # -- switching plugins at run time -------------------------------------------------

    def disable(self, name: str) -> None:
        """Stop using a plugin now: its hooks are no longer called, its objects are gone."""
        if self.host.info(name) is None:
            raise KeyError(name)
        plugin = self.host.pm.get_plugin(name)
        if plugin is not None:
            self._objects[name] = plugin
        self.host.deactivate(name)
        self.host.disabled.add(name)

    def enable(self, name: str) -> Activation:
        """Load a disabled (or failed) plugin and collect what it registers."""
        info = self.host.info(name)
        if info is None:
            raise KeyError(name)
        if self.host.is_enabled(name):
            return Activation(name)
        self.host.disabled.discard(name)
        plugin = self._objects.pop(name, None)
        if plugin is None:
            try:
                plugin = self._entry_point(info).load()
            except Exception as exc:  # noqa: BLE001 (a broken plugin is reported, not fatal)
                info.enabled, info.error = False, f"import failed: {_describe(exc)}"
                return Activation(name, error=info.error, enabled=False)
        return self._activate(plugin, info)

    def load_distribution(self, package: str) -> list[Activation]:
        """After `pip install`: load the plugins a distribution advertises, without a restart."""
        importlib.invalidate_caches()
        dist = metadata.distribution(package)
        done = []
        for ep in sorted(dist.entry_points, key=lambda e: e.name):
            if ep.group != GROUP:
                continue
            known = self.host.info(ep.name)
            if known is not None and known.enabled:
                # Its code is imported already: the new version loads at the next start.
                self.pending_restart.add(ep.name)
                done.append(Activation(ep.name, reloaded=True))
                continue
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                version=dist.version,
                distribution=dist.metadata["Name"],
                description=dist.metadata["Summary"] or None,
                enabled=False,
            )
            self.host.know(info)
            if ep.name in self.host.disabled:  # switched off: listed, never imported
                done.append(Activation(ep.name, enabled=False))
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001
                info.error = f"import failed: {_describe(exc)}"
                done.append(Activation(ep.name, error=info.error, enabled=False))
                continue
            done.append(self._activate(plugin, info))
        return done

    def _entry_point(self, info: PluginInfo) -> metadata.EntryPoint:
        importlib.invalidate_caches()
        for ep in metadata.entry_points(group=GROUP, name=info.name):
            if ep.value == info.module:
                return ep
        raise LookupError(f"entry point {info.name} ({info.module}) is no longer installed")

    def _activate(self, plugin: object, info: PluginInfo) -> Activation:
        self.host.activate(plugin, info)
        before = set(self.blueprints.names())
        if info.error is None:
            for hook, (registry, _) in REGISTRY_HOOKS.items():
                self.host.collect(hook, self.registries[registry], only=info.name)
            self.host.collect("register_blueprints", self.blueprints, only=info.name)
            self._note_blueprints()
        return Activation(
            info.name,
            error=info.error,
            enabled=self.host.is_enabled(info.name),
            blueprints=sorted(set(self.blueprints.names()) - before),
        )
