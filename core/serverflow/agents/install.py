"""Install tokens and the commands that use them."""

from __future__ import annotations

import uuid

from serverflow.tokens import INSTALL_PREFIX, new_token


def ws_url(base_url: str) -> str:
    scheme, rest = base_url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/agent/ws"


def install_command(base_url: str, token: str) -> str:
    """The line to paste on the server: as root, or as a user with sudo (the script then
    runs itself again through sudo), so no `sudo` in front that a root shell may lack."""
    return f"curl -fsSL {base_url}/install.sh | bash -s -- --token {token}"


def new_install_token(org_id: uuid.UUID) -> tuple[str, str]:
    """A one-time install token and its hash (only the hash is stored)."""
    fresh = new_token(org_id, INSTALL_PREFIX)
    return fresh.value, fresh.token_hash
