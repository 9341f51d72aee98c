"""Client secrets: generated with `secrets`, stored only as Argon2id hashes."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# Verifying against this hash when the client id is unknown keeps the response time the same
# for unknown clients and wrong secrets.
_UNKNOWN_CLIENT_HASH = _hasher.hash(secrets.token_urlsafe(16))


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


def new_client_id() -> str:
    return f"docbatch-{secrets.token_hex(8)}"


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(secret_hash: str | None, secret: str) -> bool:
    """Check a secret against its hash; `None` stands for an unknown client and never matches."""
    try:
        matched = _hasher.verify(secret_hash or _UNKNOWN_CLIENT_HASH, secret)
    except (VerificationError, InvalidHashError):
        return False
    return matched and secret_hash is not None
