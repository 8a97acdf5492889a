"""docs/protocol.md is normative: its test vectors and error table match the implementation."""

from __future__ import annotations

import re
from pathlib import Path

import nacl.signing

from serverflow_contract import protocol

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
CP_KEY = nacl.signing.SigningKey(bytes([1]) * 32)
AGENT_KEY = nacl.signing.SigningKey(bytes([2]) * 32)


def _blocks_after(marker: str) -> list[str]:
    tail = DOC.split(f"<!-- vector: {marker} -->", 1)[1]
    return re.findall(r"```(?:json)?\n(.*?)\n```", tail, re.S)


def test_public_keys_of_the_vectors() -> None:
    assert protocol.public_key_of(CP_KEY) in DOC
    assert protocol.public_key_of(AGENT_KEY) in DOC


def test_command_vector() -> None:
    signed_text, wire = _blocks_after("command")[:2]
    frame = protocol.parse_frame(wire)
    assert frame.type == "command"
    assert protocol.signed_bytes("command", frame.body).decode() == signed_text
    protocol.verify(protocol.public_key_of(CP_KEY), "command", frame.body, frame.sig)
    assert protocol.make_frame("command", frame.body, CP_KEY).encode() == wire


def test_heartbeat_vector() -> None:
    wire = _blocks_after("heartbeat")[0]
    frame = protocol.parse_frame(wire)
    protocol.verify(protocol.public_key_of(AGENT_KEY), "heartbeat", frame.body, frame.sig)
    assert protocol.make_frame("heartbeat", frame.body, AGENT_KEY).encode() == wire


def test_error_table_lists_every_code() -> None:
    table = dict(re.findall(r"^\| `([A-Z]+[0-9]+)` \| (.+?) \|$", DOC, re.M))
    assert set(table) == set(protocol.ERRORS)


def test_frame_types_are_all_documented() -> None:
    for frame_type in protocol.BODY_SCHEMAS:
        assert f"`{frame_type}`" in DOC, frame_type
