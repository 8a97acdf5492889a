"""Every extension point of the agent. Plugins implement them with `hookimpl`."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from serverflow_agent.deploy.settings import DeploySettings
from serverflow_contract.actions import ActionSpec
from serverflow_contract.runtime import Runtime

hookspec = pluggy.HookspecMarker("serverflow_agent")
hookimpl = pluggy.HookimplMarker("serverflow_agent")


@hookspec
def register_actions(register: Callable[[ActionSpec], None]) -> None:
    """Register actions (ActionSpec) this agent may run once the control plane signs them."""


@hookspec
def register_runtimes(register: Callable[[Runtime], None], settings: DeploySettings) -> None:
    """Register process runtimes (serverflow_contract.runtime.Runtime) that run app releases."""
