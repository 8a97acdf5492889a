"""The SPKI pin computed by the agent's DER walker equals what openssl says."""

from __future__ import annotations

import base64
import hashlib
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from serverflow_contract.tlspin import (
    DerError,
    TlsPinError,
    check_pin,
    parse_pin,
    spki_der,
    spki_pin,
)
from serverflow_testkit import missing

KEY_TYPES = {
    "rsa": ["-newkey", "rsa:2048"],
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    "ed25519": ["-newkey", "ed25519"],
}


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        missing("openssl", "the openssl binary is not installed")
    assert path is not None
    return path


def make_cert(openssl: str, directory: Path, kind: str, extra: list[str] | None = None) -> Path:
    cert = directory / f"{kind}.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            *KEY_TYPES[kind],
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=pin-test",
            "-keyout",
            str(directory / f"{kind}.key"),
            "-out",
            str(cert),
            *(extra or []),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert


def openssl_pin(openssl: str, cert: Path) -> str:
    pubkey = subprocess.run(
        [openssl, "x509", "-pubkey", "-noout", "-in", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    der = subprocess.run(
        [openssl, "pkey", "-pubin", "-outform", "der"],
        input=pubkey,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def der_of(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@pytest.mark.parametrize("kind", list(KEY_TYPES))
def test_pin_matches_openssl(tmp_path: Path, openssl: str, kind: str) -> None:
    cert = make_cert(openssl, tmp_path, kind)
    expected = openssl_pin(openssl, cert)
    assert spki_pin(der_of(cert)) == expected
    check_pin(der_of(cert), expected)


def test_pin_with_long_extensions(tmp_path: Path, openssl: str) -> None:
    # Many SAN entries push tbsCertificate lengths into multi-byte long form.
    names = ",".join(f"DNS:host{i}.example.test" for i in range(300))
    cert = make_cert(openssl, tmp_path, "ec", ["-addext", f"subjectAltName={names}"])
    assert len(der_of(cert)) > 4096
    assert spki_pin(der_of(cert)) == openssl_pin(openssl, cert)


def test_other_certificate_does_not_match(tmp_path: Path, openssl: str) -> None:
    one = make_cert(openssl, tmp_path, "rsa")
    (tmp_path / "b").mkdir()
    two = make_cert(openssl, tmp_path / "b", "rsa")
    with pytest.raises(TlsPinError, match="does not match"):
        check_pin(der_of(two), spki_pin(der_of(one)))


def test_spki_is_a_prefix_free_element(tmp_path: Path, openssl: str) -> None:
    der = der_of(make_cert(openssl, tmp_path, "ed25519"))
    spki = spki_der(der)
    assert spki[0] == 0x30 and spki in der
    # Ed25519 SPKI is always 44 bytes: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
    assert len(spki) == 44


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",
        b"\x02\x01\x00",
        b"\x30\x05\x30\x03\x02\x01",
        b"\x30\x84\xff\xff\xff\xff",
        b"\x30\x03\x1f\x01\x00",
    ],
)
def test_garbage_is_a_der_error(data: bytes) -> None:
    with pytest.raises(DerError):
        spki_der(data)
    with pytest.raises(TlsPinError):
        check_pin(data, "sha256/" + base64.b64encode(b"\0" * 32).decode())


@pytest.mark.parametrize(
    "pin", ["", "sha1/abc", "sha256/", "sha256/!!!", "sha256/" + base64.b64encode(b"x").decode()]
)
def test_malformed_pins(pin: str) -> None:
    with pytest.raises(ValueError):
        parse_pin(pin)
