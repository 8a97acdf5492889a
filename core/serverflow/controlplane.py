"""The state one control-plane app carries. Reached from handlers via `current()`."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from quart import current_app

from serverflow.agents.hub import AgentHub
from serverflow.agents.routing import make_router
from serverflow.deploys.service import Deployer
from serverflow.events import COALESCED_KINDS, EventBus, LiveEvent
from serverflow.keys import AppKeys
from serverflow.metrics import Metrics
from serverflow.plugins import Plugins
from serverflow.ratelimit import RateLimiter, make_limiter
from serverflow.refusals import RefusalLog
from serverflow.settings import Settings

EXTENSION = "serverflow"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_instance_id() -> str:
    """Random per process: tells instances apart in logs, /healthz and on the bus."""
    return secrets.token_hex(6)


def make_bus(settings: Settings, instance_id: str) -> EventBus:
    """Redis pub/sub when a Redis URL is set (several instances), else in-process."""
    if not settings.redis_url:
        return EventBus(origin=instance_id)
    from serverflow.bus_redis import RedisBus  # redis is imported only when used

    return RedisBus(settings.redis_url, origin=instance_id)


@dataclass
class ControlPlane:
    settings: Settings
    keys: AppKeys
    plugins: Plugins
    instance_id: str = field(default_factory=new_instance_id)
    bus: EventBus = field(init=False)
    hub: AgentHub = field(init=False)
    deployer: Deployer = field(init=False)
    tls_pin: str | None = None
    # The wall clock of time-based decisions (sign-in throttling); tests may replace it.
    clock: Callable[[], datetime] = utc_now

    api_limit: RateLimiter = field(init=False)
    mcp_limit: RateLimiter = field(init=False)
    # Security refusals, into the audit log at a bounded rate.
    refusals: RefusalLog = field(init=False)
    metrics: Metrics = field(init=False)

    def _bus_lag(self, event: LiveEvent) -> None:
        if event.kind not in COALESCED_KINDS:  # those wait for their bundle on purpose
            self.metrics.bus_lag.observe(max(0.0, (utc_now() - event.at).total_seconds()))

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.instance_id)
        self.bus = make_bus(self.settings, self.instance_id)
        self.bus.on_remote = self._bus_lag
        self.refusals = RefusalLog(window_s=self.settings.audit_refusal_window_s)
        redis_url = self.settings.redis_url
        self.api_limit = make_limiter(redis_url, "api", self.settings.api_rate_per_minute)
        self.mcp_limit = make_limiter(redis_url, "mcp", self.settings.mcp_rate_per_minute)
        self.hub = AgentHub(
            self.settings,
            self.keys.cipher,
            self.bus,
            refusals=self.refusals,
            router=make_router(self.settings.redis_url, self.instance_id),
            metrics=self.metrics,
        )
        self.deployer = Deployer(self.hub, self.bus, self.keys.cipher)
        self.metrics.attach(self)


def current() -> ControlPlane:
    cp: ControlPlane = current_app.extensions[EXTENSION]
    return cp
