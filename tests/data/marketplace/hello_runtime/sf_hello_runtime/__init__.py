"""A runtime plugin installed from the marketplace in tests: it only plans actions."""

from __future__ import annotations

from typing import Any

import pluggy

from serverflow_contract.interfaces import ActionCall

hookimpl = pluggy.HookimplMarker("serverflow")


class HelloRuntime:
    name = "hello"
    description = "Says hello (marketplace test plugin)."

    def restart(self, app: str, release_id: str) -> ActionCall:
        return ActionCall("hello.restart", {"app": app, "release": release_id})


@hookimpl
def register_runtimes(register: Any) -> None:
    register(HelloRuntime())
