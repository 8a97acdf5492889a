"""/healthz (the process is up) and /readyz (the database answers)."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify
from quart_schema import hide

from serverflow import __version__, db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@hide
async def healthz() -> Response:
    return jsonify({"status": "ok", "version": __version__})


@bp.get("/readyz")
@hide
async def readyz() -> tuple[Response, int]:
    if await db.ping():
        return jsonify({"status": "ready", "database": "ok"}), 200
    body = {
        "status": "unavailable",
        "database": "unreachable",
        "error": {"code": "DB001", "message": "The database is unreachable."},
    }
    return jsonify(body), 503
