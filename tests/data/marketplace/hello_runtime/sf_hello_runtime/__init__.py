"""A runtime plugin installed from the marketplace in tests: it only plans actions."""

from __future__ import annotations

from typing import Any

import pluggy

from serverflow_contract.interfaces import ActionCall, Release

hookimpl = pluggy.HookimplMarker("serverflow")


class HelloRuntime:
    name = "hello"
    description = "Says hello (marketplace test plugin)."

    def start(self, release: Release) -> ActionCall:
        return ActionCall("hello.start", {"app": release.app})

    def stop(self, app: str, release_id: str) -> ActionCall:
        return ActionCall("hello.stop", {"app": app})

    restart = delete = stop

    def status(self, app: str) -> ActionCall:
        return ActionCall("hello.status", {"app": app})

    def logs(self, app: str, lines: int) -> ActionCall:
        return ActionCall("hello.logs", {"app": app, "lines": lines})


@hookimpl
def register_runtimes(register: Any) -> None:
    register(HelloRuntime())
