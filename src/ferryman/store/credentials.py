"""Virtual key secrets: how they are made, hashed for storage and shown to people.

Keys carry 256 bits of randomness, so one SHA-256 is as good as a slow password hash and costs
microseconds on the hot path. Only the hash and a short display prefix are ever stored.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "fm-"
_DISPLAY_CHARS = 8


def generate_key() -> str:
    """A new secret: `fm-` and 43 URL-safe characters (32 random bytes)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The non-secret start of a key (`fm-` plus 8 characters), for lists and dashboards."""
    return secret[: len(KEY_PREFIX) + _DISPLAY_CHARS]
