"""Asking the local nginx what it serves for a host name (HTTP, or HTTPS with SNI).

Only the standard library: the agent stays light. The probe never verifies the
certificate: it asks which configuration generation answers, not whether to trust it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

RELEASE_HEADER = "X-ServerFlow-Release"
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    release: str | None
    location: str | None
    certificate: bytes | None  # DER of the leaf nginx presented (HTTPS only)
    body: bytes = b""  # GET only, at most MAX_BODY bytes


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 that still sends the app's domain as SNI."""

    def __init__(self, port: int, sni: str, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__("127.0.0.1", port, timeout=timeout, context=context)
        self._sni = sni
        self._tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(raw, server_hostname=self._sni)


def probe(
    port: int,
    host: str,
    path: str = "/",
    tls: bool = False,
    timeout: float = 2.0,
    method: str = "HEAD",
) -> Answer:
    """One request to 127.0.0.1:port with `Host: host`; raises OSError if none answers."""
    connection: http.client.HTTPConnection = (
        _SniConnection(port, host, timeout)
        if tls
        else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    )
    try:
        connection.request(method, path, headers={"Host": host, "Connection": "close"})
        certificate = None
        if isinstance(connection.sock, ssl.SSLSocket):
            certificate = connection.sock.getpeercert(binary_form=True)
        response = connection.getresponse()
        return Answer(
            status=response.status,
            release=response.getheader(RELEASE_HEADER),
            location=response.getheader("Location"),
            certificate=certificate,
            body=response.read(MAX_BODY) if method != "HEAD" else b"",
        )
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer: {exc}") from exc
    finally:
        connection.close()
