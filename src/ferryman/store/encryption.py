"""Provider credentials encrypted at rest: AES-256-GCM under `FERRYMAN_ENCRYPTION_KEY`, bound to their row.

A sealed credential is one string, `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`:

- a fresh random 96-bit nonce per value (GCM must never reuse one under a key);
- the key id (a short hash of the key, never the key) says which key sealed it, so a rotation can
  decrypt old values with a previous key and tell which rows still need rewriting;
- the associated data is the row's identity (`model/deployment id`): a ciphertext copied into another
  row fails to decrypt instead of quietly handing that deployment someone else's credential.

Keys are 32 random bytes written as base64 (standard or URL-safe) or 64 hex digits
(`openssl rand -base64 32`). A malformed key is a `ConfigError` naming the setting, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ferryman.errors import ConfigError, FerrymanError

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = "v1"
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class CredentialDecryptionError(FerrymanError):
    """A stored credential cannot be decrypted: sealed under a key no longer configured, altered, or
    moved from another row. The message names the row and the key id, never any secret."""


def parse_key(text: str, setting: str) -> bytes:
    """The 32 bytes `text` spells (64 hex digits, or base64); ConfigError naming `setting` otherwise."""
    text = text.strip()
    if _HEX.fullmatch(text):
        return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigError(
            [
                (
                    setting,
                    f"must be {KEY_BYTES} random bytes as base64 or 64 hex digits (openssl rand -base64 32)",
                )
            ]
        )
    return raw


def key_id(key: bytes) -> str:
    """A short, stable name for `key`: which key sealed a value, without revealing anything of it."""
    return hashlib.sha256(b"ferryman-credential-key:" + key).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Sealed:
    """The parts of a sealed credential."""

    key_id: str
    blob: bytes  # nonce ‖ ciphertext ‖ tag

    @classmethod
    def parse(cls, token: str) -> Sealed:
        """Split a stored token; CredentialDecryptionError when it is not one."""
        version, _, rest = token.partition(".")
        kid, _, data = rest.partition(".")
        if version != FORMAT or not kid or not data:
            raise CredentialDecryptionError("stored credential is not in a known format")
        try:
            blob = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raise CredentialDecryptionError("stored credential is not in a known format") from None
        return cls(kid, blob)

    def __str__(self) -> str:
        return f"{FORMAT}.{self.key_id}.{base64.urlsafe_b64encode(self.blob).decode().rstrip('=')}"


class CredentialCipher:
    """Seals credentials under the current key; opens them under it or any previous key."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        self._current_id = key_id(current)
        self._keys = {key_id(key): AESGCM(key) for key in (*previous, current)}

    @classmethod
    def from_texts(cls, current: str, previous: Sequence[str] = ()) -> CredentialCipher:
        """A cipher from configured key texts; ConfigError naming the setting at fault."""
        return cls(
            parse_key(current, "encryption.key (FERRYMAN_ENCRYPTION_KEY)"),
            [
                parse_key(text, f"encryption.previous_keys[{i}] (FERRYMAN_ENCRYPTION_KEY_PREVIOUS)")
                for i, text in enumerate(previous)
            ],
        )

    @property
    def has_previous_keys(self) -> bool:
        """Whether keys rotated out are configured (so some rows may need re-encrypting)."""
        return len(self._keys) > 1

    @property
    def current_key_id(self) -> str:
        """The id new values are sealed under."""
        return self._current_id

    def encrypt(self, plaintext: str, row: str) -> str:
        """`plaintext` sealed for `row` under the current key, with a fresh nonce."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current_id].encrypt(nonce, plaintext.encode(), _associated(row))
        return str(Sealed(self._current_id, nonce + sealed))

    def decrypt(self, token: str, row: str) -> str:
        """The plaintext of a value sealed for `row`; CredentialDecryptionError if it cannot be opened."""
        sealed = Sealed.parse(token)
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise CredentialDecryptionError(
                f"the credential of {row} was sealed under key {sealed.key_id}, which is not configured "
                "(set it in FERRYMAN_ENCRYPTION_KEY_PREVIOUS until `ferryman models reencrypt` has run)"
            )
        nonce, ciphertext = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, ciphertext, _associated(row)).decode()
        except InvalidTag:
            raise CredentialDecryptionError(
                f"the credential of {row} does not decrypt: altered, or sealed for another row"
            ) from None

    def is_current(self, token: str) -> bool:
        """Whether `token` is sealed under the current key (else a rotation should rewrite it)."""
        return Sealed.parse(token).key_id == self._current_id


def _associated(row: str) -> bytes:
    return f"ferryman:credential:{FORMAT}:{row}".encode()


def credential_hint(secret: str) -> str:
    """What responses show of a credential: its last 4 characters (less for a very short one)."""
    shown = secret[-4:] if len(secret) >= 12 else ""
    return f"…{shown}" if shown else "…"
