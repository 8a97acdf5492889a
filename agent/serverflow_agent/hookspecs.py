"""Every extension point of the agent. Plugins implement them with `hookimpl`."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from serverflow_agent.actions import ActionSpec

hookspec = pluggy.HookspecMarker("serverflow_agent")
hookimpl = pluggy.HookimplMarker("serverflow_agent")


@hookspec
def register_actions(register: Callable[[ActionSpec], None]) -> None:
    """Register actions (ActionSpec) this agent may run once the control plane signs them."""
