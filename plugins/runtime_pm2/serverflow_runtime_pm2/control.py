"""Control-plane side: the `pm2` runtime, which plans the pm2.* agent actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serverflow_contract.interfaces import ActionCall, hookimpl
from serverflow_contract.naming import process_name


class Pm2Runtime:
    name = "pm2"
    description = "Runs each release as a PM2 process (Node.js, Python or any command)."

    def restart(self, app: str, release_id: str) -> ActionCall:
        return ActionCall("pm2.restart", {"name": process_name(app, release_id)})


@hookimpl
def register_runtimes(register: Callable[[Any], None]) -> None:
    register(Pm2Runtime())
