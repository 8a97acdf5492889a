"""The process runtimes plugins register (hook `register_runtimes`), for a deploy."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from serverflow_contract.pluginhost import Registry
from serverflow_contract.runtime import Runtime

from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.plugins import AgentPlugins

DISABLED_ENV = "SERVERFLOW_AGENT_DISABLED_PLUGINS"


def load_runtimes(settings: DeploySettings) -> dict[str, Runtime]:
    """Every enabled plugin's runtimes, made for these settings. A plugin whose hook
    raises or registers something invalid is disabled, as for actions."""
    disabled = [n.strip() for n in os.environ.get(DISABLED_ENV, "").split(",") if n.strip()]
    plugins = AgentPlugins(disabled=disabled)
    host = plugins.host
    registry: Registry[Runtime] = Registry("runtime", Runtime)
    for impl in host.pm.hook.register_runtimes.get_hookimpls():
        plugin = impl.plugin_name
        if host.pm.get_plugin(plugin) is None:
            continue

        def register(obj: Runtime, _plugin: str = plugin) -> None:
            registry.add(obj, _plugin)

        offered: dict[str, Any] = {"register": register, "settings": settings}
        function: Callable[..., Any] = impl.function
        try:
            function(**{k: offered[k] for k in impl.argnames if k in offered})
        except Exception as exc:  # noqa: BLE001 - a broken plugin is disabled, not fatal
            host.fail(plugin, f"hook register_runtimes raised {type(exc).__name__}: {exc}")
            registry.drop_plugin(plugin)
    return {runtime.name: runtime for runtime in registry}
