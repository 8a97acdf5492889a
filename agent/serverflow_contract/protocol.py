"""The wire protocol between the control plane and agents: one definition, both sides.

docs/protocol.md is the prose version of this module. In short: every frame is a JSON
object `{"type": T, "body": {...}, "sig": S}`; `sig` is an Ed25519 signature over
`b"serverflow/1/" + T + b"\\n" + canonical(body)` where `canonical` is RFC 8785 (JCS)
JSON. The type is inside the signed bytes, so a signature for one kind of frame can never
be replayed as another kind.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing
import rfc8785

from serverflow_contract.schema import SchemaError, validate

PROTOCOL_VERSION = 1
DOMAIN = b"serverflow/1/"
MAX_FRAME_BYTES = 1024 * 1024
CLOCK_SKEW_MS = 30_000
MAX_COMMAND_LIFETIME_MS = 15 * 60 * 1000
MAX_SAFE_INTEGER = 2**53 - 1

# Stable error codes of the protocol (docs/protocol.md lists them with their meaning).
ERRORS: dict[str, str] = {
    "FRM001": "frame larger than the limit",
    "FRM002": "frame is not a JSON object (or has duplicate keys, NaN, binary)",
    "FRM003": "unknown frame type or unexpected top-level key",
    "FRM004": "frame body does not match the schema of its type",
    "FRM005": "frame not expected at this point of the conversation",
    "AUT001": "unknown server, or the server has no registered agent key",
    "AUT002": "the presented public key is not this server's agent key",
    "AUT003": "handshake signature does not verify",
    "AUT004": "handshake not completed in time",
    "AUT005": "protocol version not supported",
    "AUT006": "control plane busy with other agents connecting; retry later",
    "SIG001": "signature does not verify with the pinned key",
    "CMD002": "command addressed to another server",
    "CMD003": "command expired",
    "CMD004": "command issued in the future (beyond the allowed clock skew)",
    "CMD005": "command nonce already seen (replay)",
    "CMD006": "action unknown to this agent",
    "CMD007": "action not allowed by the signed action registry",
    "CMD008": "parameters do not match the action's schema",
    "CMD009": "command lifetime longer than allowed",
    "CMD010": "action timed out",
    "CMD011": "action failed",
    "CMD012": "action exceeded its memory limit",
    "REG001": "registry older than the one already accepted",
    "KEY001": "key rotation announcement does not verify",
    "INS001": "install token invalid, expired or already used",
}


# WebSocket close codes after an error frame (docs/protocol.md §2), the same on both sides.
CLOSE_POLICY = 1008  # policy violation: every refusal but a too-large frame
CLOSE_TOO_BIG = 1009  # message too big: FRM001
CLOSE_TRY_LATER = 1013  # try again later: AUT006, nothing wrong with the agent
_CLOSE_CODES = {"FRM001": CLOSE_TOO_BIG, "AUT006": CLOSE_TRY_LATER}


def close_code(error_code: str) -> int:
    """The close code that goes with the error frame of a refusal."""
    return _CLOSE_CODES.get(error_code, CLOSE_POLICY)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message or ERRORS.get(code, code)
        super().__init__(f"{code}: {self.message}")


# -- canonical JSON (RFC 8785) -------------------------------------------------------


def canonical(value: Any) -> bytes:
    """RFC 8785 JSON Canonicalization Scheme: sorted keys, no whitespace, ES6 numbers.

    The rfc8785 package (Trail of Bits) does the encoding; it passes the vectors of
    docs/protocol.md and RFC 8785's, and refuses with a ValueError what has no canonical
    form: integers beyond +-(2^53 - 1), NaN and infinities, lone surrogates, non-string
    keys, other types. Keys sort by UTF-16 code units; -0.0 is written 0.
    """
    return rfc8785.dumps(value)


# -- keys and signatures --------------------------------------------------------------


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def public_key_of(key: nacl.signing.SigningKey) -> str:
    return b64e(bytes(key.verify_key))


def key_id(public_key: str) -> str:
    """A short fingerprint of a public key, for logs and UIs."""
    return hashlib.sha256(b64d(public_key)).hexdigest()[:16]


def signed_bytes(frame_type: str, body: dict[str, Any]) -> bytes:
    return DOMAIN + frame_type.encode("ascii") + b"\n" + canonical(body)


def sign(key: nacl.signing.SigningKey, frame_type: str, body: dict[str, Any]) -> str:
    return b64e(key.sign(signed_bytes(frame_type, body)).signature)


def _sign_raw(key: nacl.signing.SigningKey, frame_type: str, raw: str) -> str:
    return b64e(key.sign(DOMAIN + frame_type.encode("ascii") + b"\n" + raw.encode()).signature)


@functools.lru_cache(maxsize=4096)
def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(b64d(public_key))


def verify(
    public_key: str,
    frame_type: str,
    body: dict[str, Any],
    signature: str | None,
    raw: str | None = None,
) -> None:
    """Raise ProtocolError(SIG001) unless `signature` is `public_key`'s over this body.

    `raw` is the body's text as received. A conforming sender transmits the canonical
    form, so verifying those bytes first avoids re-encoding; the parsed body is that very
    text, so nothing unsigned can slip through. Otherwise the body is re-canonicalized.
    """
    if not signature:
        raise ProtocolError("SIG001", "frame is not signed")
    try:
        verify_key = _verify_key(public_key)
        sig = b64d(signature)
        if raw is not None:
            try:
                verify_key.verify(DOMAIN + frame_type.encode("ascii") + b"\n" + raw.encode(), sig)
                return
            except nacl.exceptions.BadSignatureError:
                pass
        verify_key.verify(signed_bytes(frame_type, body), sig)
    except (
        nacl.exceptions.BadSignatureError,
        nacl.exceptions.ValueError,
        ValueError,
        TypeError,
    ) as exc:
        raise ProtocolError("SIG001") from exc


# -- time and nonces ------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_nonce() -> str:
    return b64e(os.urandom(24))


def new_id() -> str:
    return str(uuid.uuid4())


# -- frames ---------------------------------------------------------------------------

_ID = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[A-Za-z0-9_.:-]+$"}
_KEY = {"type": "string", "minLength": 43, "maxLength": 43, "pattern": r"^[A-Za-z0-9_-]+$"}
_NONCE = {"type": "string", "minLength": 16, "maxLength": 64, "pattern": r"^[A-Za-z0-9_-]+$"}
_TS = {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER}
_NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"^[a-z0-9][a-z0-9_.-]*$"}
_KIND = {"type": "string", "enum": ["read", "change", "destructive"]}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


ACTION_DESCRIPTION = _obj(
    {
        "name": _NAME,
        "kind": _KIND,
        "description": {"type": "string", "maxLength": 1000},
        "params_schema": {"type": "object"},
        "timeout": {"type": "number", "minimum": 0},
        "memory_limit_mb": {"type": "integer", "minimum": 1},
    },
)

BODY_SCHEMAS: dict[str, dict[str, Any]] = {
    # agent -> control plane
    "hello": _obj(
        {
            "server_id": _ID,
            "org_id": _ID,
            "public_key": _KEY,
            "control_plane_key": _KEY,
            "agent_version": {"type": "string", "maxLength": 40},
            "protocol": {"type": "integer", "minimum": 1, "maximum": 1000},
        }
    ),
    "auth": _obj(
        {
            "server_id": _ID,
            "session_id": _ID,
            "nonce": _NONCE,
            "actions": {"type": "array", "maxItems": 500, "items": ACTION_DESCRIPTION},
        }
    ),
    "result": _obj(
        {
            "command_id": {"type": "string", "maxLength": 64},
            "server_id": _ID,
            "status": {"type": "string", "enum": ["ok", "error", "refused"]},
            "started_at": _TS,
            "finished_at": _TS,
        },
        {
            "code": {"type": "string", "maxLength": 16},
            "message": {"type": "string", "maxLength": 4000},
            "output": {},
        },
    ),
    "heartbeat": _obj(
        {
            "server_id": _ID,
            "seq": {"type": "integer", "minimum": 0},
            "sent_at": _TS,
            "metrics": {"type": "object"},
        }
    ),
    "event": _obj({"server_id": _ID, "kind": _NAME, "sent_at": _TS, "data": {"type": "object"}}),
    "agent_key": _obj(
        {
            "server_id": _ID,
            "old_public_key": _KEY,
            "new_public_key": _KEY,
            "issued_at": _TS,
            "proof": {"type": "string", "maxLength": 100},
        }
    ),
    # control plane -> agent
    "challenge": _obj({"server_id": _ID, "session_id": _ID, "nonce": _NONCE, "issued_at": _TS}),
    "authorized": _obj(
        {
            "server_id": _ID,
            "session_id": _ID,
            "issued_at": _TS,
            "heartbeat_interval_ms": {"type": "integer", "minimum": 100, "maximum": 3_600_000},
        }
    ),
    "registry": _obj(
        {
            "server_id": _ID,
            "version": {"type": "integer", "minimum": 0},
            "issued_at": _TS,
            "actions": {"type": "array", "maxItems": 500, "items": _NAME},
        }
    ),
    "command": _obj(
        {
            "id": _ID,
            "server_id": _ID,
            "action": _NAME,
            "params": {"type": "object"},
            "issued_at": _TS,
            "expires_at": _TS,
            "nonce": _NONCE,
        }
    ),
    "key_rotation": _obj({"old_public_key": _KEY, "new_public_key": _KEY, "issued_at": _TS}),
    "agent_key_accepted": _obj({"server_id": _ID, "public_key": _KEY, "issued_at": _TS}),
    # either direction, unsigned; the sender closes the connection after it
    "error": _obj(
        {
            "code": {"type": "string", "maxLength": 16},
            "message": {"type": "string", "maxLength": 1000},
        }
    ),
}

UNSIGNED = {"hello", "error"}


@dataclass(frozen=True)
class Frame:
    type: str
    body: dict[str, Any]
    sig: str | None = None
    # The body's canonical text when known (made here, or received in canonical form):
    # saves encoding it twice when sending and once more when verifying.
    raw: str | None = field(default=None, compare=False, repr=False)

    def encode(self) -> str:
        body = self.raw if self.raw is not None else canonical(self.body).decode("utf-8")
        sig = "" if self.sig is None else f',"sig":{json.dumps(self.sig)}'
        return f'{{"body":{body}{sig},"type":{json.dumps(self.type)}}}'

    def verify(self, public_key: str) -> None:
        verify(public_key, self.type, self.body, self.sig, self.raw)


def make_frame(
    frame_type: str, body: dict[str, Any], key: nacl.signing.SigningKey | None = None
) -> Frame:
    """Build (and sign, unless the type is unsigned) a frame; the body is validated too."""
    _check_body(frame_type, body)
    raw = canonical(body).decode("utf-8")
    if frame_type in UNSIGNED:
        return Frame(frame_type, body, raw=raw)
    if key is None:
        raise ValueError(f"{frame_type} frames must be signed")
    return Frame(frame_type, body, _sign_raw(key, frame_type, raw), raw)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ProtocolError("FRM002", f"duplicate key {key!r}")
        result[key] = value
    return result


def _integer(text: str) -> int | float:
    """JSON numbers are doubles on the wire: a canonical float such as 1e20 is written as
    integer digits, and must come back as a float to re-encode identically."""
    value = int(text)
    if abs(value) <= MAX_SAFE_INTEGER:
        return value
    try:
        return float(value)
    except OverflowError as exc:
        raise ProtocolError("FRM002", "number out of range") from exc


def _no_constants(name: str) -> Any:
    raise ProtocolError("FRM002", f"{name} is not JSON")


def loads(text: str) -> Any:
    """Parse JSON the way frames are parsed: strict, and numbers as JavaScript sees them."""
    return json.loads(
        text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_int=_integer
    )


def _check_body(frame_type: str, body: Any) -> None:
    schema = BODY_SCHEMAS.get(frame_type)
    if schema is None:
        raise ProtocolError("FRM003", f"unknown frame type {frame_type!r}")
    try:
        validate(body, schema)
    except SchemaError as exc:
        raise ProtocolError("FRM004", f"{frame_type}: {exc}") from exc


def parse_frame(data: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Decode one frame, strictly. Raises ProtocolError with a FRM code on any problem."""
    if isinstance(data, bytes | bytearray):
        raise ProtocolError("FRM002", "binary frames are not part of the protocol")
    if not isinstance(data, str):
        raise ProtocolError("FRM002", "frame must be text")
    if len(data) > max_bytes or len(data.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError("FRM001", f"frame larger than {max_bytes} bytes")
    try:
        raw = loads(data)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("FRM002", f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProtocolError("FRM002", "frame must be a JSON object")
    extra = set(raw) - {"type", "body", "sig"}
    if extra:
        raise ProtocolError("FRM003", f"unexpected keys: {', '.join(sorted(extra))}")
    frame_type, body, sig = raw.get("type"), raw.get("body"), raw.get("sig")
    if not isinstance(frame_type, str):
        raise ProtocolError("FRM003", "missing frame type")
    _check_body(frame_type, body)
    if frame_type in UNSIGNED:
        if sig is not None:
            raise ProtocolError("FRM004", f"{frame_type} frames are not signed")
    elif not isinstance(sig, str) or len(sig) > 100:
        raise ProtocolError("FRM004", f"{frame_type} frames must carry a signature")
    assert isinstance(body, dict)  # _check_body validated it against an object schema
    return Frame(frame_type, body, sig, _raw_body(data, frame_type, sig))


def _raw_body(data: str, frame_type: str, sig: str | None) -> str | None:
    """The body's text if the frame is laid out canonically ({"body":...,"sig":...,"type":...})."""
    sig_part = "" if sig is None else f',"sig":{json.dumps(sig)}'
    tail = f'{sig_part},"type":{json.dumps(frame_type)}}}'
    if data.startswith('{"body":') and data.endswith(tail):
        return data[len('{"body":') : len(data) - len(tail)]
    return None


def error_frame(code: str, message: str | None = None) -> Frame:
    return make_frame(
        "error", {"code": code, "message": (message or ERRORS.get(code, code))[:1000]}
    )


# -- commands -------------------------------------------------------------------------


def new_command(
    key: nacl.signing.SigningKey,
    server_id: str,
    action: str,
    params: dict[str, Any],
    ttl_ms: int = 60_000,
    command_id: str | None = None,
    issued_at: int | None = None,
) -> Frame:
    issued = now_ms() if issued_at is None else issued_at
    body = {
        "id": command_id or new_id(),
        "server_id": server_id,
        "action": action,
        "params": params,
        "issued_at": issued,
        "expires_at": issued + ttl_ms,
        "nonce": new_nonce(),
    }
    return make_frame("command", body, key)


def check_freshness(
    body: dict[str, Any], now: int | None = None, skew_ms: int = CLOCK_SKEW_MS
) -> None:
    """The time rules for a command (see docs/protocol.md, "Freshness")."""
    now = now_ms() if now is None else now
    issued, expires = body["issued_at"], body["expires_at"]
    if expires - issued > MAX_COMMAND_LIFETIME_MS or expires < issued:
        raise ProtocolError("CMD009")
    if issued > now + skew_ms:
        raise ProtocolError("CMD004")
    if expires < now - skew_ms:
        raise ProtocolError("CMD003")
