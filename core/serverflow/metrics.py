"""/metrics: this instance's figures in the Prometheus text format (prometheus-client).

One registry per control plane (not the library's global one: tests run many control
planes in one process). Figures are instance-wide counts, never tenant data. Served to
callers on this machine that come in directly (no X-Forwarded-For: not through the
reverse proxy), or to anyone with `SERVERFLOW_METRICS_TOKEN` as a bearer token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serverflow import __version__

if TYPE_CHECKING:
    from serverflow.controlplane import ControlPlane

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


class Metrics:
    def __init__(self, instance_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        info = Gauge(
            "serverflow_instance_info",
            "This control-plane instance (always 1; its id and version as labels).",
            ["instance_id", "version"],
            registry=self.registry,
        )
        info.labels(instance_id, __version__).set(1)
        self.agents = Gauge(
            "serverflow_agents_connected",
            "Agents whose WebSocket this instance holds.",
            registry=self.registry,
        )
        self.commands = Counter(
            "serverflow_commands",
            "Commands this instance signed, by how they ended (rate() gives commands/s).",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "serverflow_command_latency_seconds",
            "From signing a command to its verified result, as the asking instance saw it.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.handshakes_deferred = Counter(
            "serverflow_agent_handshakes_deferred",
            "Agent connections told to retry later (AUT006): no handshake slot "
            "(SERVERFLOW_AGENT_HANDSHAKES_MAX at once) freed within 3 s.",
            registry=self.registry,
        )
        self.relayed = Counter(
            "serverflow_commands_relayed",
            "Commands other instances signed that this one passed to an agent it holds.",
            registry=self.registry,
        )
        self.bus_lag = Histogram(
            "serverflow_bus_lag_seconds",
            "From an event's creation on another instance to its arrival here (clocks of "
            "both instances: keep them in sync); not the gauges sent once a second in "
            "bundles (server.metrics).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def attach(self, cp: ControlPlane) -> None:
        self.agents.set_function(lambda: len(cp.hub.sessions))
        self.registry.register(_DatabasePool())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DatabasePool(Collector):
    """The database connections: the pool's size and how many are in use (asyncpg), or
    the one connection SQLite has."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "serverflow_db_pool_connections",
            "Database connections by state (size, in_use, max).",
            labels=["state"],
        )
        pool = _pool()
        if pool is not None:
            size, idle = pool.get_size(), pool.get_idle_size()
            family.add_metric(["size"], size)
            family.add_metric(["in_use"], size - idle)
            family.add_metric(["max"], pool.get_max_size())
        else:
            family.add_metric(["size"], 1)
            family.add_metric(["max"], 1)
        yield family


def _pool() -> Any:
    from tortoise.exceptions import ConfigurationError

    from serverflow import db

    try:
        return getattr(db.connection(), "_pool", None)
    except (RuntimeError, KeyError, StopIteration, ConfigurationError):  # not initialised
        return None


def allowed(authorization: str | None, forwarded: bool, remote: str, token: str) -> bool:
    """Whether a /metrics request may read the figures."""
    if token:
        given = (authorization or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())
    return not forwarded and remote in ("127.0.0.1", "::1")
