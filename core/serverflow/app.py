"""The application factory."""

from __future__ import annotations

import asyncio
import logging
import ssl

from quart import Quart
from quart_auth import QuartAuth
from quart_schema import QuartSchema

from serverflow import __version__, audit, db, marketplace, plans
from serverflow.api.openapi import ApiOnlyOpenAPI
from serverflow.controlplane import EXTENSION, ControlPlane
from serverflow.errors import ConfigError
from serverflow.http_errors import JsonRequest, refuse_oversized_body, register_error_handlers
from serverflow.keys import AppKeys
from serverflow.mcp.endpoint import McpEndpoint
from serverflow.plugins import Plugins
from serverflow.settings import Settings, load_settings
from serverflow_contract.tlspin import spki_pin

log = logging.getLogger(__name__)


def tls_pin(settings: Settings) -> str | None:
    """The SPKI pin of the certificate agents will see (handed to them at registration)."""
    if settings.tls_certfile is None:
        return None
    try:
        pem = settings.tls_certfile.read_text()
        der = ssl.PEM_cert_to_DER_cert(
            pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        )
        return spki_pin(der)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the TLS certificate {settings.tls_certfile}: {exc}"
        ) from exc


async def _forward_events_to_plugins(cp: ControlPlane) -> None:
    """Hand every lifecycle event to plugins' `on_event`; a failing plugin is disabled."""
    # Only this instance's own events: each instance hands its events to its plugins,
    # so that with several instances a plugin still sees every event once.
    async with cp.bus.subscribe(local_only=True) as queue:
        while True:
            event = await queue.get()
            await cp.plugins.host.acall("on_event", event=event)


def create_app(settings: Settings | None = None, plugins: Plugins | None = None) -> Quart:
    settings = settings or load_settings()
    keys = AppKeys(settings.secrets_dir)
    plugins = plugins or Plugins(disabled=settings.disabled_plugins)

    app = Quart("serverflow")
    app.request_class = JsonRequest
    https = settings.base_url.startswith("https://")
    app.config.update(
        SECRET_KEY=keys.session_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SESSION_COOKIE_NAME="serverflow_csrf",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        QUART_AUTH_COOKIE_NAME="serverflow_session",
        QUART_AUTH_COOKIE_SAMESITE="Lax",
        QUART_AUTH_COOKIE_SECURE=https,
        QUART_AUTH_DURATION=settings.session_hours * 3600,
        QUART_SCHEMA_CONVERT_CASING=False,
    )
    cp = ControlPlane(settings=settings, keys=keys, plugins=plugins, tls_pin=tls_pin(settings))
    app.extensions[EXTENSION] = cp

    QuartAuth(app)
    QuartSchema(
        app,
        openapi_path="/api/v1/openapi.json",
        swagger_ui_path=None,  # the hosted UIs load from CDNs; ServerFlow works offline
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "ServerFlow API", "version": __version__},
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
        openapi_provider_class=ApiOnlyOpenAPI,
    )

    from serverflow.agent_endpoint import bp as agents_bp
    from serverflow.api import bp as api_bp
    from serverflow.health import bp as health_bp
    from serverflow.web import bp as web_bp

    # Plugins the dashboard disabled stay off across restarts: apply that before their
    # blueprints are mounted, so a disabled plugin gets no routes.
    marketplace.current(app).apply_saved_state()

    app.register_blueprint(health_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(agents_bp)
    app.register_blueprint(web_bp)
    for blueprint in list(plugins.blueprints):
        try:
            app.register_blueprint(blueprint)
        except (ValueError, AssertionError) as exc:  # e.g. a name or route already taken
            plugins.host.fail(
                plugins.blueprints.owner(blueprint.name),
                f"blueprint {blueprint.name!r} rejected: {exc}",
            )
    app.before_request(refuse_oversized_body)
    register_error_handlers(app)
    mcp = McpEndpoint(app, cp)
    app.asgi_app = mcp.wrap(app.asgi_app)  # type: ignore[method-assign,assignment,arg-type]

    background: list[asyncio.Task[None]] = []

    @app.before_serving
    async def _start() -> None:
        await db.init_orm(settings.database)
        try:
            # Before the hub: its first events already go to the other instances. Redis
            # need not answer yet (the bus reconnects; /readyz says so meanwhile).
            await cp.bus.start()
            await cp.hub.start()
            await cp.deployer.start()
            await mcp.start()
        except BaseException:
            await cp.bus.stop()
            await db.close_orm()  # an open SQLite thread would keep the process alive
            raise
        background.append(asyncio.create_task(_forward_events_to_plugins(cp)))
        background.append(asyncio.create_task(audit.retention_loop(settings.audit_retention_days)))
        background.append(asyncio.create_task(plans.sweep_loop()))
        background.append(asyncio.create_task(cp.refusals.run()))
        log.info(
            "serverflow %s ready on %s (database: %s, events: %s, instance %s)",
            __version__,
            settings.base_url,
            settings.dialect,
            cp.bus.description,
            cp.instance_id,
        )

    @app.after_serving
    async def _stop() -> None:
        for task in background:
            task.cancel()
        await mcp.stop()
        await cp.deployer.stop()
        await cp.hub.stop()
        await cp.bus.stop()  # after the hub: its last events (servers offline) go out
        for limiter in (cp.api_limit, cp.mcp_limit):
            await limiter.close()
        await cp.refusals.flush()  # the repeats counted in the last minute
        await db.close_orm()

    return app
