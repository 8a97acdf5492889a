"""The control plane's own secrets: generated on first run into the data directory, mode 0600."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

from serverflow.errors import ConfigError

KEY_BYTES = 32


def load_or_create_key(path: Path, nbytes: int = KEY_BYTES) -> bytes:
    """Read a key file, creating it with fresh random bytes (mode 0600) if it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(nacl.utils.random(nbytes)).decode() + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"secret file {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}",
            code="CFG002",
        )
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError as exc:
        raise ConfigError(f"secret file {path} is corrupt (not base64)") from exc
    if len(key) != nbytes:
        raise ConfigError(f"secret file {path} holds {len(key)} bytes, expected {nbytes}")
    return key


class Cipher:
    """Authenticated encryption (XSalsa20-Poly1305) for secrets stored in the database."""

    PREFIX = "v1:"

    def __init__(self, key: bytes) -> None:
        self._box = nacl.secret.SecretBox(key)

    def encrypt(self, plaintext: str) -> str:
        return self.PREFIX + base64.b64encode(self._box.encrypt(plaintext.encode())).decode()

    def decrypt(self, token: str) -> str:
        if not token.startswith(self.PREFIX):
            raise ValueError("unknown ciphertext format")
        try:
            return self._box.decrypt(base64.b64decode(token[len(self.PREFIX) :])).decode()
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            raise ValueError("ciphertext does not decrypt with this key") from exc


class AppKeys:
    """The session-signing key and the encryption key of one data directory."""

    def __init__(self, secrets_dir: Path) -> None:
        self.session_key = load_or_create_key(secrets_dir / "session.key")
        self.cipher = Cipher(load_or_create_key(secrets_dir / "encryption.key"))
