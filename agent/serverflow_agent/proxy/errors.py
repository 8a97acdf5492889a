"""What the proxy raises: one message a person can act on, nothing secret in it."""

from __future__ import annotations


class ProxyError(Exception):
    """A proxy change was refused or failed; whatever served before still serves."""


class CertificateError(ProxyError):
    """A certificate could not be obtained, installed or renewed."""
