"""TLS pins: the SPKI pin of the control plane's key, computed by it and checked by agents.

A pin is `sha256/<base64 of SHA-256(SubjectPublicKeyInfo DER)>`, the same value as
`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
-binary | base64`. Pinning the key rather than the certificate survives renewals that keep
the key, and means a certificate from a stolen or coerced CA is not enough to impersonate
the control plane. The SPKI is found with a tiny DER walker so the agent does not need the
`cryptography` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PIN_PREFIX = "sha256/"


class TlsPinError(OSError):
    """The server's certificate does not carry the pinned public key."""


class DerError(ValueError):
    """The certificate is not the DER structure we expect."""


def _tlv(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """Read one DER element at `pos`: (tag, content start, end)."""
    if pos + 2 > limit:
        raise DerError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags do not occur in an X.509 certificate's outer layers")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerError("indefinite length is not DER")
        if count > 4 or pos + count > limit:
            raise DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > limit:
        raise DerError("element runs past its container")
    return tag, pos, end


SEQUENCE, INTEGER, VERSION = 0x30, 0x02, 0xA0


def spki_der(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo element (DER, tag and length included) of a certificate."""
    tag, start, end = _tlv(cert_der, 0, len(cert_der))
    if tag != SEQUENCE:
        raise DerError("certificate is not a SEQUENCE")
    tag, pos, tbs_end = _tlv(cert_der, start, end)
    if tag != SEQUENCE:
        raise DerError("tbsCertificate is not a SEQUENCE")
    tag, _, after = _tlv(cert_der, pos, tbs_end)
    if tag == VERSION:  # [0] EXPLICIT version, absent for v1 certificates
        pos = after
    # serialNumber, signature, issuer, validity, subject, then subjectPublicKeyInfo.
    for expected in (INTEGER, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE):
        tag, _, after = _tlv(cert_der, pos, tbs_end)
        if tag != expected:
            raise DerError(f"unexpected tag 0x{tag:02x} in tbsCertificate")
        pos = after
    tag, _, after = _tlv(cert_der, pos, tbs_end)
    if tag != SEQUENCE:
        raise DerError("subjectPublicKeyInfo is not a SEQUENCE")
    return cert_der[pos:after]


def spki_pin(cert_der: bytes) -> str:
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki_der(cert_der)).digest()).decode()


def parse_pin(pin: str) -> bytes:
    """The 32-byte digest of a `sha256/...` pin; ValueError when it is malformed."""
    if not isinstance(pin, str) or not pin.startswith(PIN_PREFIX):
        raise ValueError("a TLS pin looks like sha256/<base64 SHA-256 of the SPKI>")
    try:
        digest = base64.b64decode(pin[len(PIN_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the TLS pin is not valid base64") from exc
    if len(digest) != 32:
        raise ValueError("the TLS pin must hold a 32-byte SHA-256 digest")
    return digest


def check_pin(cert_der: bytes | None, pin: str) -> None:
    """Raise TlsPinError unless the certificate's SPKI hashes to `pin`."""
    if not cert_der:
        raise TlsPinError("the server presented no certificate")
    try:
        actual = hashlib.sha256(spki_der(cert_der)).digest()
    except DerError as exc:
        raise TlsPinError(f"cannot read the server certificate: {exc}") from exc
    if not hmac.compare_digest(actual, parse_pin(pin)):
        raise TlsPinError(
            "the server's public key does not match the pinned one "
            f"(pinned {pin}, got {PIN_PREFIX}{base64.b64encode(actual).decode()})"
        )
