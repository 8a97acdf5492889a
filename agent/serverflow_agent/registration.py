"""`serverflow-agent register`: trade a one-time install token for a pinned control plane."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nacl.signing

from serverflow_agent import __version__
from serverflow_agent.config import AgentConfig, ConfigError, ensure_state_dir
from serverflow_agent.identity import (
    IdentityError,
    create_identity,
    identity_path,
    load_identity,
    replace_identity,
)
from serverflow_agent.state import AgentState
from serverflow_agent.tlspin import opener
from serverflow_contract import protocol
from serverflow_contract.tlspin import TlsPinError, parse_pin

REGISTER_PATH = "/api/v1/agents/register"
MAX_RESPONSE_BYTES = 64 * 1024


class RegistrationError(Exception):
    """Registration failed; `code` is the control plane's error code or our own."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Registration:
    config: AgentConfig
    public_key: str


def _post(
    url: str, payload: dict[str, Any], ca_file: str | None, pin: str | None, timeout: float
) -> tuple[int, bytes]:
    # The scheme was checked in register(): only http(s) reaches here.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"serverflow-agent/{__version__}",
        },
        method="POST",
    )
    try:
        with opener(ca_file, pin).open(request, timeout=timeout) as response:
            return int(response.status), response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:
        body = exc.read(MAX_RESPONSE_BYTES) if exc.fp is not None else b""
        return int(exc.code), body
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TlsPinError):
            raise RegistrationError("TLS_PIN", str(reason)) from exc
        if isinstance(reason, OSError) and "CERTIFICATE_VERIFY_FAILED" in str(reason):
            raise RegistrationError("TLS", f"certificate verification failed: {reason}") from exc
        raise RegistrationError("CONNECTION", f"cannot reach {url}: {reason}") from exc
    except TlsPinError as exc:
        raise RegistrationError("TLS_PIN", str(exc)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise RegistrationError("CONNECTION", f"cannot reach {url}: {exc}") from exc


def _error_of(status: int, body: bytes) -> RegistrationError:
    try:
        data = json.loads(body)
        error = data["error"]
        code, message = str(error["code"])[:40], str(error["message"])[:1000]
    except (ValueError, KeyError, TypeError):
        return RegistrationError(f"HTTP{status}", f"the control plane answered HTTP {status}")
    return RegistrationError(code, message)


def _answer(body: bytes, url: str, ws_url_default: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RegistrationError("BAD_RESPONSE", "the control plane's answer is not JSON") from exc
    if not isinstance(data, dict):
        raise RegistrationError("BAD_RESPONSE", "the control plane's answer is not an object")
    for name in ("server_id", "org_id", "control_plane_key"):
        if not isinstance(data.get(name), str):
            raise RegistrationError("BAD_RESPONSE", f"the answer has no {name}")
    ws_url = data.get("ws_url") or ws_url_default
    if not isinstance(ws_url, str):
        raise RegistrationError("BAD_RESPONSE", "ws_url must be a string")
    if url.startswith("https://") and not ws_url.startswith("wss://"):
        # Registration was protected by TLS; the channel must not silently lose it.
        raise RegistrationError("BAD_RESPONSE", f"refusing unencrypted ws_url {ws_url!r}")
    try:
        nacl.signing.VerifyKey(protocol.b64d(data["control_plane_key"]))
    except (ValueError, TypeError) as exc:
        raise RegistrationError("BAD_RESPONSE", "control_plane_key is not an Ed25519 key") from exc
    data["ws_url"] = ws_url
    return data


def default_ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/agent/ws"


def register(
    state_dir: Path,
    url: str,
    token: str,
    pin: str | None = None,
    ca_file: str | None = None,
    force: bool = False,
    timeout: float = 30.0,
) -> Registration:
    """Register with the control plane and write identity.key and agent.json."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise RegistrationError("USAGE", "--url must start with http:// or https://")
    if pin is not None:
        if not url.startswith("https://"):
            raise RegistrationError("USAGE", "--pin needs an https:// control plane URL")
        try:
            parse_pin(pin)
        except ValueError as exc:
            raise RegistrationError("USAGE", str(exc)) from exc
    if ca_file is not None and not Path(ca_file).is_file():
        raise RegistrationError("USAGE", f"--ca-file {ca_file} does not exist")

    ensure_state_dir(state_dir)
    registered = (state_dir / "agent.json").exists()
    has_key = identity_path(state_dir).exists()
    if registered and has_key and not force:
        raise RegistrationError(
            "ALREADY_REGISTERED",
            f"{state_dir} already holds a registered agent; use --force to register again "
            "(this replaces the agent's key)",
        )
    try:
        if has_key and not force:
            # A previous attempt made the key but did not finish: reuse it.
            key = load_identity(state_dir)
        elif has_key:
            key = protocol.new_signing_key()  # written only once the CP accepted it
        else:
            key = create_identity(state_dir)
    except (IdentityError, FileExistsError) as exc:
        raise RegistrationError("STATE", str(exc)) from exc
    public_key = protocol.public_key_of(key)

    status, body = _post(
        url + REGISTER_PATH,
        {
            "token": token,
            "public_key": public_key,
            "hostname": socket.gethostname(),
            "agent_version": __version__,
        },
        ca_file,
        pin,
        timeout,
    )
    if status not in (200, 201):
        raise _error_of(status, body)
    answer = _answer(body, url, default_ws_url(url))
    # An explicit --pin wins; a pin in the answer only counts if the answer came over TLS.
    tls_pin = pin or (answer.get("tls_pin") if url.startswith("https://") else None) or None
    try:
        config = AgentConfig(
            url=url,
            ws_url=answer["ws_url"],
            server_id=answer["server_id"],
            org_id=answer["org_id"],
            control_plane_key=answer["control_plane_key"],
            tls_pin=tls_pin,
            ca_file=str(Path(ca_file).resolve()) if ca_file else None,
        )
    except (ConfigError, ValueError) as exc:
        raise RegistrationError("BAD_RESPONSE", str(exc)) from exc
    if has_key and force:
        replace_identity(state_dir, key)
    config.save(state_dir)
    # A registry signed for a previous registration must not outlive it.
    state = AgentState.open(state_dir)
    try:
        state.clear_registry()
    finally:
        state.close()
    return Registration(config=config, public_key=public_key)
