"""The agent's Ed25519 identity key, and the pending key of an agent-key rotation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nacl.signing

from serverflow_agent.config import fsync_dir, write_private
from serverflow_contract import protocol

IDENTITY_FILE = "identity.key"
PENDING_FILE = "identity.next.key"

log = logging.getLogger(__name__)


class IdentityError(Exception):
    """A key file is missing or unreadable."""


def _encode(key: nacl.signing.SigningKey) -> bytes:
    return (protocol.b64e(bytes(key)) + "\n").encode("ascii")


def _read(path: Path) -> nacl.signing.SigningKey:
    try:
        text = path.read_text("ascii").strip()
        seed = protocol.b64d(text)
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        key = nacl.signing.SigningKey(seed)
    except FileNotFoundError as exc:
        raise IdentityError(f"{path} does not exist") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        # Never include the file's content in the message: it is a private key.
        raise IdentityError(f"{path} is not a valid key file ({type(exc).__name__})") from exc
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by others; it should be mode 0600", path)
    return key


def identity_path(state_dir: Path) -> Path:
    return state_dir / IDENTITY_FILE


def pending_path(state_dir: Path) -> Path:
    return state_dir / PENDING_FILE


def create_identity(state_dir: Path) -> nacl.signing.SigningKey:
    """Generate the identity key; O_EXCL so two registrations can never both write one."""
    key = protocol.new_signing_key()
    write_private(identity_path(state_dir), _encode(key), exclusive=True)
    return key


def replace_identity(state_dir: Path, key: nacl.signing.SigningKey) -> None:
    write_private(identity_path(state_dir), _encode(key))


def load_identity(state_dir: Path) -> nacl.signing.SigningKey:
    return _read(identity_path(state_dir))


def create_pending(state_dir: Path, replace: bool = False) -> nacl.signing.SigningKey:
    """Write identity.next.key: the running agent offers it to the control plane."""
    key = protocol.new_signing_key()
    write_private(pending_path(state_dir), _encode(key), exclusive=not replace)
    return key


def load_pending(state_dir: Path) -> nacl.signing.SigningKey | None:
    path = pending_path(state_dir)
    if not path.exists():
        return None
    return _read(path)


def promote_pending(state_dir: Path) -> None:
    """The control plane accepted the pending key: it becomes the identity, atomically."""
    os.replace(pending_path(state_dir), identity_path(state_dir))
    fsync_dir(state_dir)
