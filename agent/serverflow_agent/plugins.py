"""The agent's plugin host: loads `serverflow_agent` entry points and collects actions."""

from __future__ import annotations

from collections.abc import Iterable

from serverflow_agent import hookspecs
from serverflow_contract.actions import ActionSpec
from serverflow_contract.pluginhost import PluginHost, Registry


class AgentPlugins:
    def __init__(self, disabled: Iterable[str] = (), load: bool = True) -> None:
        self.host = PluginHost("serverflow_agent", hookspecs, disabled=disabled)
        self.actions: Registry[ActionSpec] = Registry("action", ActionSpec)
        if load:
            self.host.load_entrypoints()
            self.refresh()

    def refresh(self) -> None:
        self.host.collect("register_actions", self.actions)
