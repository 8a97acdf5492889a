"""What an agent-side plugin may use of the agent, besides `serverflow_contract`.

A plugin imports this module and the contract, nothing else of the agent (a test checks
it), so the agent's internals can change without breaking plugins.
"""

from __future__ import annotations

from serverflow_agent.config import state_dir_from
from serverflow_agent.deploy.environment import base_env
from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.hookspecs import hookimpl
from serverflow_agent.logfiles import Line as LogLine
from serverflow_agent.logfiles import tail as tail_log
from serverflow_agent.spawn import CommandNotFound, CommandTimeout, Finished, capture, stream

__all__ = [
    "CommandNotFound",
    "CommandTimeout",
    "DeploySettings",
    "Finished",
    "LogLine",
    "base_env",
    "capture",
    "deploy_settings",
    "hookimpl",
    "stream",
    "tail_log",
]


def deploy_settings() -> DeploySettings:
    """The running agent's deploy settings (for an action that needs, say, the PM2 home)."""
    return DeploySettings.load(state_dir_from(None))
