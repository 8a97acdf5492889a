"""API token format: `sf_<organisation id hex>_<secret>`.

The organisation id in clear lets the server open the right tenant scope before looking
the token up (row-level security then applies to the lookup too). Only the SHA-256 of the
whole token is stored: the secret part carries 256 random bits, so a slow KDF adds nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

_TOKEN = re.compile(r"^(sf|sfi)_([0-9a-f]{32})_([A-Za-z0-9_\-]{43})$")
API_PREFIX = "sf"
INSTALL_PREFIX = "sfi"  # one-time agent install tokens


@dataclass(frozen=True)
class NewToken:
    value: str
    token_hash: str
    prefix: str


def hash_token(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_token(org_id: uuid.UUID, prefix: str = API_PREFIX) -> NewToken:
    secret = secrets.token_urlsafe(32)
    value = f"{prefix}_{org_id.hex}_{secret}"
    return NewToken(value=value, token_hash=hash_token(value), prefix=secret[:6])


def token_org(value: str, prefix: str = API_PREFIX) -> uuid.UUID | None:
    """The organisation a well-formed token claims, or None if the token is malformed."""
    match = _TOKEN.match(value)
    if not match or match.group(1) != prefix:
        return None
    return uuid.UUID(match.group(2))


def new_session_token() -> tuple[str, str]:
    value = secrets.token_urlsafe(32)
    return value, hash_token(value)
