"""Simulated agents: the real protocol and real signatures, many per process.

Used by bench/agents.py and by the control-plane tests that need an agent-side peer
sending exactly (or deliberately not exactly) what the protocol says.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from serverflow_contract import protocol
from serverflow_contract.protocol import Frame

ECHO_ACTION = {
    "name": "sim.echo",
    "kind": "read",
    "description": "Return the params.",
    "params_schema": {"type": "object"},
    "timeout": 5,
    "memory_limit_mb": 64,
}


def register(
    base_url: str, token: str, key: nacl.signing.SigningKey, hostname: str = "sim"
) -> dict[str, Any]:
    """POST /api/v1/agents/register; returns the JSON answer (raises on HTTP errors)."""
    body = json.dumps(
        {
            "token": token,
            "public_key": protocol.public_key_of(key),
            "hostname": hostname,
            "agent_version": "sim",
        }
    ).encode()
    request = urllib.request.Request(
        base_url + "/api/v1/agents/register",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


@dataclass
class SimAgent:
    ws_url: str
    server_id: str
    org_id: str
    key: nacl.signing.SigningKey
    control_plane_key: str
    actions: list[dict[str, Any]] = field(default_factory=lambda: [ECHO_ACTION])
    ws: ClientConnection | None = None
    registry: list[str] = field(default_factory=list)
    received: list[Frame] = field(default_factory=list)
    seq: int = 0
    heartbeat_interval_ms: int = 5000
    on_command: Callable[[SimAgent, Frame], Awaitable[None]] | None = None

    @property
    def public_key(self) -> str:
        return protocol.public_key_of(self.key)

    async def connect(self, hello_key: str | None = None) -> None:
        self.ws = await connect(
            self.ws_url,
            max_size=protocol.MAX_FRAME_BYTES * 2,
            open_timeout=30,
            ping_interval=None,
            compression=None,  # as the real agent: frames are small, deflate only costs CPU
        )
        await self.send(
            protocol.make_frame(
                "hello",
                {
                    "server_id": self.server_id,
                    "org_id": self.org_id,
                    "public_key": hello_key or self.public_key,
                    "control_plane_key": self.control_plane_key,
                    "agent_version": "sim",
                    "protocol": protocol.PROTOCOL_VERSION,
                },
            )
        )

    async def send(self, frame: Frame | str) -> None:
        assert self.ws is not None
        await self.ws.send(frame if isinstance(frame, str) else frame.encode())

    async def recv(self, timeout: float = 10) -> Frame:
        assert self.ws is not None
        return protocol.parse_frame(await asyncio.wait_for(self.ws.recv(), timeout))

    async def handshake(self, signer: nacl.signing.SigningKey | None = None) -> None:
        """hello → [key_rotation*] → challenge → auth → authorized → registry."""
        await self.connect()
        while True:
            frame = await self.recv()
            if frame.type == "key_rotation":
                protocol.verify(self.control_plane_key, "key_rotation", frame.body, frame.sig)
                self.control_plane_key = frame.body["new_public_key"]
                continue
            break
        if frame.type != "challenge":
            raise AssertionError(f"expected challenge, got {frame}")
        protocol.verify(self.control_plane_key, "challenge", frame.body, frame.sig)
        auth = {
            "server_id": self.server_id,
            "session_id": frame.body["session_id"],
            "nonce": frame.body["nonce"],
            "actions": self.actions,
        }
        await self.send(protocol.make_frame("auth", auth, signer or self.key))
        authorized = await self.recv()
        if authorized.type != "authorized":
            raise AssertionError(f"expected authorized, got {authorized}")
        protocol.verify(self.control_plane_key, "authorized", authorized.body, authorized.sig)
        self.heartbeat_interval_ms = authorized.body["heartbeat_interval_ms"]
        registry = await self.recv()
        protocol.verify(self.control_plane_key, "registry", registry.body, registry.sig)
        self.registry = list(registry.body["actions"])

    async def heartbeat(self, metrics: dict[str, Any] | None = None) -> None:
        self.seq += 1
        await self.send(
            protocol.make_frame(
                "heartbeat",
                {
                    "server_id": self.server_id,
                    "seq": self.seq,
                    "sent_at": protocol.now_ms(),
                    "metrics": metrics or {"cpu_percent": 1.5, "memory": {"percent": 12.0}},
                },
                self.key,
            )
        )

    async def result_for(
        self,
        command: Frame,
        status: str = "ok",
        output: Any = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "command_id": command.body["id"],
            "server_id": self.server_id,
            "status": status,
            "started_at": protocol.now_ms(),
            "finished_at": protocol.now_ms(),
        }
        if output is not None:
            body["output"] = output
        if code:
            body["code"] = code
        if message:
            body["message"] = message
        await self.send(protocol.make_frame("result", body, self.key))

    async def serve(self) -> None:
        """Answer commands (echo their params) and send heartbeats until the socket closes."""
        assert self.ws is not None

        async def beats() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_interval_ms / 1000)
                await self.heartbeat()

        beat_task = asyncio.create_task(beats())
        try:
            async for data in _frames(self.ws):
                frame = protocol.parse_frame(data)
                self.received.append(frame)
                if frame.type == "key_rotation":
                    frame.verify(self.control_plane_key)
                    self.control_plane_key = frame.body["new_public_key"]
                elif frame.type == "command":
                    frame.verify(self.control_plane_key)
                    if self.on_command is not None:
                        await self.on_command(self, frame)
                    else:
                        await self.result_for(frame, output={"echo": frame.body["params"]})
        finally:
            beat_task.cancel()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def _frames(ws: ClientConnection) -> Any:
    """Incoming frames until the connection closes, however it closes."""
    try:
        async for data in ws:
            yield data
    except ConnectionClosed:
        return
