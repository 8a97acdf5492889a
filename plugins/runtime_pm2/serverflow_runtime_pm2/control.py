"""Control-plane side: the `pm2` runtime, which plans agent actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy
from serverflow_contract.interfaces import ActionCall, Release

hookimpl = pluggy.HookimplMarker("serverflow")


def process_name(app: str, release_id: str) -> str:
    return f"{app}--{release_id}"


class Pm2Runtime:
    name = "pm2"
    description = "Runs each release as a PM2 process (Node.js, Python or any command)."

    def start(self, release: Release) -> ActionCall:
        return ActionCall(
            "pm2.start",
            {
                "name": process_name(release.app, release.release_id),
                "cwd": release.directory,
                "command": list(release.start_command),
                "port": release.port,
                "env": dict(release.env),
            },
        )

    def stop(self, app: str, release_id: str) -> ActionCall:
        return ActionCall("pm2.stop", {"name": process_name(app, release_id)})

    def restart(self, app: str, release_id: str) -> ActionCall:
        return ActionCall("pm2.restart", {"name": process_name(app, release_id)})

    def delete(self, app: str, release_id: str) -> ActionCall:
        return ActionCall("pm2.delete", {"name": process_name(app, release_id)})

    def status(self, app: str) -> ActionCall:
        return ActionCall("pm2.status", {"prefix": f"{app}--"})

    def logs(self, app: str, lines: int) -> ActionCall:
        return ActionCall("pm2.logs", {"prefix": f"{app}--", "lines": lines})


@hookimpl
def register_runtimes(register: Callable[[Any], None]) -> None:
    register(Pm2Runtime())
