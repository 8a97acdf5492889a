"""The control plane's Ed25519 signing keys: creation, rotation, and the announcement chain.

The private keys live in the database (so several control-plane instances share them),
encrypted with the data directory's key. Rotating creates a new key and a `key_rotation`
announcement signed by the previous key; agents accept the new key because its
announcement verifies with the key they pinned. Agents that were offline receive the
chain of announcements from their pinned key at their next handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import nacl.signing
from tortoise.transactions import in_transaction

from serverflow.keys import Cipher
from serverflow.models import SigningKey
from serverflow_contract import protocol


@dataclass(frozen=True)
class ActiveKey:
    public_key: str
    key: nacl.signing.SigningKey

    @property
    def key_id(self) -> str:
        return protocol.key_id(self.public_key)


def _load(row: SigningKey, cipher: Cipher) -> ActiveKey:
    seed = protocol.b64d(cipher.decrypt(row.private_key))
    return ActiveKey(public_key=row.public_key, key=nacl.signing.SigningKey(seed))


async def current_key(cipher: Cipher) -> ActiveKey:
    """The key that signs now; created on first use."""
    row = await SigningKey.filter(retired_at__isnull=True).order_by("-id").first()
    if row is None:
        async with in_transaction():
            row = await SigningKey.filter(retired_at__isnull=True).order_by("-id").first()
            if row is None:
                key = protocol.new_signing_key()
                row = await SigningKey.create(
                    public_key=protocol.public_key_of(key),
                    private_key=cipher.encrypt(protocol.b64e(bytes(key))),
                )
    return _load(row, cipher)


async def current_public_key() -> str | None:
    row = await SigningKey.filter(retired_at__isnull=True).order_by("-id").first()
    return row.public_key if row else None


async def rotate(cipher: Cipher) -> ActiveKey:
    """Make a new signing key, announced with a signature by the one it replaces."""
    old = await current_key(cipher)
    new = protocol.new_signing_key()
    new_public = protocol.public_key_of(new)
    body = {
        "old_public_key": old.public_key,
        "new_public_key": new_public,
        "issued_at": protocol.now_ms(),
    }
    frame = protocol.make_frame("key_rotation", body, old.key)
    async with in_transaction():
        await SigningKey.filter(public_key=old.public_key).update(retired_at=datetime.now(UTC))
        await SigningKey.create(
            public_key=new_public,
            private_key=cipher.encrypt(protocol.b64e(bytes(new))),
            previous_public_key=old.public_key,
            announcement=frame.body,
            announcement_sig=frame.sig,
        )
    return ActiveKey(public_key=new_public, key=new)


async def chain_from(pinned: str) -> list[protocol.Frame] | None:
    """Announcements leading from `pinned` to the current key, or None if `pinned` is unknown."""
    rows = {r.public_key: r for r in await SigningKey.all()}
    if pinned not in rows:
        return None
    by_previous = {r.previous_public_key: r for r in rows.values() if r.previous_public_key}
    chain: list[protocol.Frame] = []
    at = pinned
    while at in by_previous:
        row = by_previous[at]
        chain.append(protocol.Frame("key_rotation", row.announcement, row.announcement_sig))
        at = row.public_key
    return chain
