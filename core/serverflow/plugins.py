"""The control plane's plugins: entry points of the `serverflow` group, and their registries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from quart import Blueprint

from serverflow import hookspecs, interfaces
from serverflow_agent.pluginhost import PluginHost, Registry

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


class Plugins:
    """Loads plugins once and exposes what they registered."""

    def __init__(self, disabled: Iterable[str] = (), load: bool = True) -> None:
        self.host = PluginHost("serverflow", hookspecs, disabled=disabled)
        self.registries: dict[str, Registry[Any]] = {
            name: Registry(name.rstrip("s").replace("_", " "), iface)
            for name, iface in REGISTRY_HOOKS.values()
        }
        self.blueprints: Registry[Blueprint] = Registry("blueprint", Blueprint)
        if load:
            self.host.load_entrypoints()
            self.collect()

    def collect(self) -> None:
        for hook, (name, _) in REGISTRY_HOOKS.items():
            self.host.collect(hook, self.registries[name])
        self.host.collect("register_blueprints", self.blueprints)

    @property
    def runtimes(self) -> Registry[interfaces.Runtime]:
        return self.registries["runtimes"]

    def report(self) -> list[dict[str, Any]]:
        """Every plugin with its status and what it provides (CLI, API and dashboard)."""
        return [
            {**info.as_dict(), "provides": self.provided(info.name)} for info in self.host.plugins()
        ]

    def provided(self, plugin: str) -> dict[str, list[str]]:
        """What each registry holds from one plugin, e.g. {"runtimes": ["pm2"]}."""
        out: dict[str, list[str]] = {}
        for name, registry in self.registries.items():
            names = [n for n in registry.names() if registry.owner(n) == plugin]
            if names:
                out[name] = names
        return out
