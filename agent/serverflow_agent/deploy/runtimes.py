"""The process runtimes plugins register (hook `register_runtimes`), for a deploy."""

from __future__ import annotations

import os

from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.plugins import AgentPlugins
from serverflow_contract.pluginhost import Registry
from serverflow_contract.runtime import Runtime

DISABLED_ENV = "SERVERFLOW_AGENT_DISABLED_PLUGINS"


def load_runtimes(settings: DeploySettings) -> dict[str, Runtime]:
    """Every enabled plugin's runtimes, made for these settings. A plugin whose hook
    raises or registers something invalid is disabled, as for actions."""
    disabled = [n.strip() for n in os.environ.get(DISABLED_ENV, "").split(",") if n.strip()]
    host = AgentPlugins(disabled=disabled).host
    registry: Registry[Runtime] = host.collect(
        "register_runtimes", Registry("runtime", Runtime), settings=settings
    )
    return {runtime.name: runtime for runtime in registry}
