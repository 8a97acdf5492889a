"""Password hashing with argon2id (memory-hard), via libsodium."""

from __future__ import annotations

import asyncio
import functools
import secrets

import nacl.exceptions
import nacl.pwhash

_ARGON = nacl.pwhash.argon2id
MIN_LENGTH = 10


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so timing does not reveal which exist."""
    return hash_password("serverflow-dummy-password")


def hash_password(password: str) -> str:
    return _ARGON.str(
        password.encode(),
        opslimit=_ARGON.OPSLIMIT_INTERACTIVE,
        memlimit=_ARGON.MEMLIMIT_INTERACTIVE,
    ).decode()


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        ok = _ARGON.verify((stored_hash or _dummy_hash()).encode(), password.encode())
        return bool(ok) and stored_hash is not None
    except nacl.exceptions.CryptoError:  # wrong password (InvalidkeyError) or bad hash
        return False


async def ahash_password(password: str) -> str:
    """`hash_password` off the event loop (argon2id takes tens of milliseconds)."""
    return await asyncio.to_thread(hash_password, password)


async def averify_password(stored_hash: str | None, password: str) -> bool:
    return await asyncio.to_thread(verify_password, stored_hash, password)


def generate_password() -> str:
    """A random password for generated accounts (about 120 bits)."""
    return secrets.token_urlsafe(15)


def check_strength(password: str) -> str | None:
    """A reason the password is unacceptable, or None."""
    if len(password) < MIN_LENGTH:
        return f"the password must have at least {MIN_LENGTH} characters"
    return None
