"""The REST API under /api/v1. One module per area; each registers its routes on `bp`."""

from __future__ import annotations

from quart import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from serverflow.api import (  # noqa: E402,F401
    apps,
    audit,
    members,
    org,
    plans,
    plugins,
    servers,
    tokens,
)
