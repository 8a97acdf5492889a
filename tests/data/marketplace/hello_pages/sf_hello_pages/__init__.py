"""A plugin with a blueprint: installing it needs a restart before its route exists."""

from __future__ import annotations

from typing import Any

import pluggy
from quart import Blueprint

hookimpl = pluggy.HookimplMarker("serverflow")

bp = Blueprint("hello_pages", __name__)


@bp.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "from a plugin"}


@hookimpl
def register_blueprints(register: Any) -> None:
    register(bp)
