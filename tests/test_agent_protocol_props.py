"""Property tests of the wire protocol module: the parser only ever says ProtocolError,
canonical JSON round-trips, and signatures bind the type and every byte of the body."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serverflow_contract import protocol

KEY = protocol.new_signing_key()
PUBLIC = protocol.public_key_of(KEY)


def _float_ok(x: float) -> bool:
    # Integer-valued floats from 2^53 up to 1e21 are written as integer digits (ES6
    # number formatting) and must come back as floats: they are kept in on purpose.
    return math.isfinite(x)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-protocol.MAX_SAFE_INTEGER, protocol.MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False).filter(_float_ok)
    | st.text(st.characters(exclude_categories=["Cs"]))
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=8), inner, max_size=5
        )
    ),
    max_leaves=30,
)
frame_types = st.sampled_from([*protocol.BODY_SCHEMAS, "nope", ""])


def parse_or_protocol_error(data: Any) -> None:
    try:
        protocol.parse_frame(data)
    except protocol.ProtocolError as exc:
        assert exc.code in protocol.ERRORS


@given(st.text())
def test_random_text_only_raises_protocol_error(data: str) -> None:
    parse_or_protocol_error(data)


@given(st.binary())
def test_binary_is_refused(data: bytes) -> None:
    parse_or_protocol_error(data)


@given(json_values)
def test_random_json_only_raises_protocol_error(value: Any) -> None:
    parse_or_protocol_error(json.dumps(value))


@given(frame_types, json_values, st.none() | st.text(max_size=120) | json_values)
def test_frame_shaped_json_only_raises_protocol_error(frame_type: str, body: Any, sig: Any) -> None:
    parse_or_protocol_error(json.dumps({"type": frame_type, "body": body, "sig": sig}))
    parse_or_protocol_error(json.dumps({"type": frame_type, "body": body}))


@given(st.text(alphabet='{}[]":,0123456789.eE+-truefalsn \\u', max_size=200))
def test_json_like_noise_only_raises_protocol_error(data: str) -> None:
    parse_or_protocol_error(data)


@given(st.integers(1, 5000))
def test_deep_nesting_is_refused_not_crashing(depth: int) -> None:
    parse_or_protocol_error('{"type": "heartbeat", "body": ' + "[" * depth + "]" * depth + "}")


@given(json_values)
def test_canonical_round_trips(value: Any) -> None:
    encoded = protocol.canonical(value)
    decoded = protocol.loads(encoded.decode())
    assert decoded == value
    assert protocol.canonical(decoded) == encoded


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_canonical_ignores_key_order(value: dict[str, Any]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert protocol.canonical(reordered) == protocol.canonical(value)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=10), json_values, min_size=1, max_size=6), st.data())
def test_signature_binds_type_and_body(body: dict[str, Any], data: st.DataObject) -> None:
    sig = protocol.sign(KEY, "command", body)
    protocol.verify(PUBLIC, "command", body, sig)
    try:
        protocol.verify(PUBLIC, "result", body, sig)
        raise AssertionError("a command signature verified as a result")
    except protocol.ProtocolError:
        pass
    key = data.draw(st.sampled_from(sorted(body)))
    changed = {**body, key: [body[key]]}
    try:
        protocol.verify(PUBLIC, "command", changed, sig)
        raise AssertionError("a changed body verified")
    except protocol.ProtocolError:
        pass


def test_signed_frames_survive_encoding() -> None:
    frame = protocol.new_command(KEY, "srv-1", "system.info", {"x": [1, 2.5, "é"]})
    parsed = protocol.parse_frame(frame.encode())
    assert parsed == frame
    protocol.verify(PUBLIC, "command", parsed.body, parsed.sig)


def test_signatures_verify_in_any_layout_and_only_untampered() -> None:
    body = {"server_id": "s1", "seq": 3, "sent_at": 5, "metrics": {"cpu": 1.5, "big": 1e20}}
    frame = protocol.make_frame("heartbeat", body, KEY)
    canonical_text = frame.encode()
    assert protocol.parse_frame(canonical_text).raw is not None
    protocol.parse_frame(canonical_text).verify(PUBLIC)
    # Another layout of the same frame (pretty-printed, keys reordered): still verifies.
    relaid = json.dumps(
        {"type": "heartbeat", "sig": frame.sig, "body": json.loads(canonical_text)["body"]},
        indent=2,
    )
    assert protocol.parse_frame(relaid).raw is None
    protocol.parse_frame(relaid).verify(PUBLIC)
    # Any change to the body, in either layout, is refused.
    for text in (
        canonical_text.replace('"seq":3', '"seq":4'),
        relaid.replace('"seq": 3', '"seq": 4'),
    ):
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.parse_frame(text).verify(PUBLIC)
        assert err.value.code == "SIG001"
