"""The reverse proxy in front of the apps (nginx) and their certificates (ACME).

The reconciler's entry point::

    proxy = Proxy(settings)  # DeploySettings: uses settings.nginx and settings.acme
    proxy.switch("shop", Route(["shop.example.com"], upstream_port=4107), "r3-1a2b3c4", tls=True)
    proxy.switch("api", Route([], upstream_port=4108, public_port=8101), "r1-5d6e7f8")
    proxy.remove("shop")
    proxy.renew_certificates()  # periodically; reloads nginx if anything was renewed

`renew` is the handler of the agent's `proxy.renew_certificates` action, which the agent
runs on a timer (serverflow_agent.renewal).

`switch` returns once nginx answers every domain (and the public port, if the route has
one) with `X-ServerFlow-Release: <release>`, or
raises `ProxyError` (`CertificateError` when ACME failed) with the previous configuration
still in place and serving. It blocks (subprocesses, polling): call it from asyncio with
`asyncio.to_thread`. Changes are serialised by a lock file, across threads and processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from serverflow_agent.config import state_dir_from
from serverflow_agent.deploy.settings import DeploySettings
from serverflow_agent.proxy.certs import CertificateInfo, Certificates, RenewalReport, leaf_der
from serverflow_agent.proxy.errors import CertificateError, ProxyError
from serverflow_agent.proxy.nginx import Nginx, Site, Tls, render
from serverflow_agent.proxy.probe import Answer
from serverflow_agent.proxy.routes import Route, check_app, check_release, checked

__all__ = ["CertificateError", "Proxy", "ProxyError", "RenewalReport", "Route", "renew"]


def renew(params: dict[str, Any]) -> dict[str, Any]:
    """The handler of `proxy.renew_certificates` (runs in the action runner)."""
    report = Proxy(DeploySettings.load(state_dir_from(None))).renew_certificates()
    return {"renewed": report.renewed, "failed": report.failed}


class Proxy:
    """Route apps through nginx, with certificates when asked."""

    def __init__(self, settings: DeploySettings, wait_timeout: float = 15.0) -> None:
        self.nginx = Nginx(settings.nginx, settings.acme.webroot)
        self.certificates = Certificates(settings.acme, settings.nginx)
        self.wait_timeout = wait_timeout

    def switch(
        self,
        app: str,
        route: Route,
        release: str,
        tls: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Serve `release` of `app` at `route`; with `tls`, obtain or reuse a certificate
        first (saying which through `progress`)."""
        say = progress or (lambda line: None)
        route = checked(route)
        check_app(app)
        check_release(release)
        if not tls or not route.domains:  # a public port alone is plain HTTP
            self.nginx.apply(Site(app, route, release), self.wait_timeout)
            return
        # Refuse a bad route before asking the CA for anything.
        planned = Tls(*self.certificates.paths(route.domains[0]))
        render(Site(app, route, release, planned), self.nginx.settings, self.nginx.webroot)
        current = self.certificates.existing(route.domains)
        names = ", ".join(route.domains)
        if current is not None:
            say(
                f"certificate for {names}: reusing the installed one "
                f"(valid until {current.not_after:%Y-%m-%d})"
            )
        else:
            say(f"certificate for {names}: asking {self.certificates.acme.directory_url}")
        served = self.nginx.sites().get(app)
        # HTTP-01 needs nginx to answer for every domain; the app's file already does for its own.
        pending = [d for d in route.domains if served is None or d not in served.domains]
        if current is not None:
            pending = []
        try:
            if pending:
                self.nginx.serve_challenge(app, pending)
            if current is None:
                self.nginx.check_challenge(route.domains, self.wait_timeout)
            cert, key = self.certificates.ensure(route.domains)
            if current is None:
                issued = self.certificates.info(route.domains[0])
                until = f" (valid until {issued.not_after:%Y-%m-%d})" if issued else ""
                say(f"certificate for {names}: issued{until}")
            self.nginx.apply(Site(app, route, release, Tls(cert, key)), self.wait_timeout)
        except ProxyError as exc:
            if isinstance(exc, CertificateError):
                say(f"certificate for {names}: failed: {exc}")
            if pending:
                with contextlib.suppress(ProxyError):
                    self.nginx.drop_challenge(app)
            raise

    def remove(self, app: str) -> None:
        """Stop routing to `app` (its certificate stays, for a later re-deploy)."""
        self.nginx.remove(app, self.wait_timeout)

    def current_release(self, app: str) -> str | None:
        """The release the app's nginx file routes to, if any."""
        info = self.nginx.sites().get(app)
        return info.release if info else None

    def renew_certificates(self) -> RenewalReport:
        """Renew the certificates in use that expire within `acme.renew_days`; reload nginx.

        A certificate no app uses any more is left to expire: its domains may not point
        here now, so the CA could not validate them.
        """
        in_use = {s.domains[0] for s in self.nginx.sites().values() if s.tls}
        report = self.certificates.renew_due(in_use)
        renewed = [info for n in report.renewed if (info := self.certificates.info(n))]
        if renewed:
            self.nginx.reload(settle=lambda: self._wait_presented(renewed))
        return report

    def _wait_presented(self, renewed: list[CertificateInfo]) -> None:
        """Wait until nginx hands out each renewed certificate (a reload may silently fail)."""
        in_use = {d for s in self.nginx.sites().values() if s.tls for d in s.domains}
        for info in renewed:
            if info.name not in in_use:
                continue
            last = self.nginx.wait_until(
                info.name, "/", True, _presents(leaf_der(info.cert)), self.wait_timeout
            )
            if last is not None:
                raise ProxyError(
                    f"nginx still presents the old certificate for {info.name} after a reload "
                    f"({self.wait_timeout:g}s); see nginx's error log"
                )


def _presents(expected: bytes) -> Callable[[Answer | None], bool]:
    return lambda answer: answer is not None and answer.certificate == expected
