"""The one thing the reconciler needs from the reverse proxy, and its nginx implementation.

The reconciler only talks to a `ProxySwitch`; `NginxSwitch` adapts
serverflow_agent.proxy.Proxy to it, imported on first use so that apps without domains
never load (or depend on) the proxy code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from serverflow_agent.deploy.settings import DeploySettings

if TYPE_CHECKING:
    from serverflow_agent.proxy import Proxy


class ProxySwitchError(Exception):
    """The proxy refused or failed the change; it still routes as it did before."""


class ProxySwitch(Protocol):
    def switch(
        self,
        app: str,
        domains: Sequence[str],
        release: str,
        *,
        tls: bool,
        port: int | None = None,
        static_root: Path | None = None,
        static_paths: Sequence[tuple[str, str]] = (),
        public_port: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Route `domains`, and `public_port` (any Host) if given, to `port` (or serve
        `static_root`), with `static_paths` (URL prefix, directory) served by the proxy
        itself, then return once the proxy answers with `release`; raise ProxySwitchError
        with the old routing intact. `progress` hears about the certificate."""

    def available(self) -> str | None:
        """None if the proxy can take routes on this server, else why not."""

    def remove(self, app: str) -> None:
        """Stop routing to `app` (no error if it was not routed)."""


class NginxSwitch:
    def __init__(self, settings: DeploySettings) -> None:
        self.settings = settings
        self._proxy: Proxy | None = None

    def _get(self) -> Proxy:
        if self._proxy is None:
            from serverflow_agent.proxy import Proxy

            self._proxy = Proxy(self.settings)
        return self._proxy

    def switch(
        self,
        app: str,
        domains: Sequence[str],
        release: str,
        *,
        tls: bool,
        port: int | None = None,
        static_root: Path | None = None,
        static_paths: Sequence[tuple[str, str]] = (),
        public_port: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        from serverflow_agent.proxy import ProxyError, Route

        route = Route(
            list(domains),
            upstream_port=port,
            static_root=None if static_root is None else str(static_root),
            static_paths=tuple(static_paths),
            public_port=public_port,
        )
        try:
            self._get().switch(app, route, release, tls=tls, progress=progress)
        except ProxyError as exc:
            raise ProxySwitchError(str(exc)) from exc

    def available(self) -> str | None:
        # The installer makes the directory where systemd runs and nginx is installed (and
        # tests point it at their own nginx): without it, nginx does not read what the
        # agent would write.
        conf_dir = self.settings.nginx.conf_dir
        if conf_dir.is_dir():
            return None
        return (
            f"nginx is not set up on this server (deploy.nginx.conf_dir {conf_dir} does not "
            "exist: the agent's installer makes it and includes it from nginx's configuration "
            "where systemd runs and nginx is installed; elsewhere, do both by hand)"
        )

    def remove(self, app: str) -> None:
        from serverflow_agent.proxy import ProxyError

        try:
            self._get().remove(app)
        except ProxyError as exc:
            raise ProxySwitchError(str(exc)) from exc
