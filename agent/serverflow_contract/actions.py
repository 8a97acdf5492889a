"""What an agent action is: one entry of the signed action registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ActionKind = Literal["read", "change", "destructive"]
ACTION_KINDS: tuple[ActionKind, ...] = ("read", "change", "destructive")


@dataclass(frozen=True)
class ActionSpec:
    """An action an agent can run.

    `handler` is an import path ("package.module:function") rather than a callable so
    the agent can run it in a separate, rlimited subprocess. There is deliberately no
    way to describe "run this shell string".
    """

    name: str
    description: str
    kind: ActionKind
    handler: str
    params_schema: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "additionalProperties": False}
    )
    timeout: float = 30.0
    memory_limit_mb: int = 256
    # False: the memory limit applies to the action's own process only; the programs it
    # starts through serverflow_agent.spawn (builds, the PM2 daemon and its apps) run
    # without it. Not part of describe(): it is how this agent runs the action.
    limit_children: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"action {self.name!r}: kind must be one of {ACTION_KINDS}")
        if ":" not in self.handler:
            raise ValueError(f"action {self.name!r}: handler must look like 'module:function'")
        if self.timeout <= 0 or self.memory_limit_mb <= 0:
            raise ValueError(f"action {self.name!r}: timeout and memory limit must be positive")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "params_schema": self.params_schema,
            "timeout": self.timeout,
            "memory_limit_mb": self.memory_limit_mb,
        }
