"""/healthz (the process is up) and /readyz (the database answers, and Redis when set)."""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, Response, jsonify, request
from quart_schema import hide

from serverflow import __version__, db
from serverflow.controlplane import current
from serverflow.errors import PermissionDenied
from serverflow.metrics import allowed

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
@hide
async def healthz() -> Response:
    return jsonify({"status": "ok", "version": __version__, "instance": current().instance_id})


@bp.get("/readyz")
@hide
async def readyz() -> tuple[Response, int]:
    cp = current()
    database_ok = await db.ping()
    body: dict[str, Any] = {"status": "ready", "database": "ok" if database_ok else "unreachable"}
    redis_problem = None
    if cp.settings.redis_url:
        # Without Redis this instance's events reach only its own pages: not ready, so
        # that a load balancer sends users to an instance that sees everything.
        # And without its routing channel, commands for agents held elsewhere fail.
        redis_problem = await cp.bus.problem() or cp.hub.router.problem()
        body["redis"] = "ok" if redis_problem is None else "unreachable"
        if redis_problem is not None:
            body["redis_error"] = redis_problem
    if not database_ok:
        body["error"] = {"code": "DB001", "message": "The database is unreachable."}
    if database_ok and redis_problem is None:
        return jsonify(body), 200
    body["status"] = "unavailable"
    return jsonify(body), 503


@bp.get("/metrics")
@hide
async def metrics() -> Response | tuple[Response, int]:
    """This instance's figures for Prometheus (see serverflow.metrics for who may read)."""
    cp = current()
    if not allowed(
        request.headers.get("Authorization"),
        "X-Forwarded-For" in request.headers,
        request.remote_addr or "",
        cp.settings.metrics_token,
    ):
        # JSON, as scrapers and scripts read it (not the dashboard's HTML error page).
        refused = PermissionDenied(
            "/metrics answers direct requests from this machine, or with the metrics token "
            "(SERVERFLOW_METRICS_TOKEN) as a bearer token",
            code="MET001",
        )
        log.warning("/metrics refused to %s: %s", request.remote_addr, refused.code)
        return jsonify(refused.as_dict()), 403
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(cp.metrics.render(), content_type=CONTENT_TYPE_LATEST)
