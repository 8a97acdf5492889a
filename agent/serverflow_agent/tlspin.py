"""TLS for the agent: CA verification plus an optional pin of the server's public key
(serverflow_contract.tlspin says what a pin is)."""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from typing import Any

from serverflow_contract.tlspin import TlsPinError, check_pin


def check_ssl_object(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, pin: str | None) -> None:
    """Apply the pin (if any) to an established TLS connection."""
    if pin is None:
        return
    if ssl_object is None:
        raise TlsPinError("a TLS pin is configured but the connection is not TLS")
    check_pin(ssl_object.getpeercert(binary_form=True), pin)


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Certificate and host name verification on, against ca_file or the system CAs."""
    return ssl.create_default_context(cafile=ca_file)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A registration request carries a one-time token: never resend it elsewhere.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def opener(ca_file: str | None = None, pin: str | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener that verifies TLS, checks the pin before any byte is sent, and
    does not follow redirects."""
    context = client_context(ca_file)

    class PinnedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            try:
                check_ssl_object(self.sock, pin)
            except BaseException:
                self.close()
                raise

    class PinnedHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(PinnedHTTPSConnection, req, context=context)

    return urllib.request.build_opener(PinnedHTTPSHandler(context=context), _NoRedirects())
