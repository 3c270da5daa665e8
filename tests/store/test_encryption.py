"""AES-GCM sealing of stored credentials: round trips, fresh nonces, rows bound by associated data,
tampering and unknown keys refused without a secret in the message, keys parsed and validated by name."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from ferryman.errors import ConfigError
from ferryman.settings import load_settings
from ferryman.store.encryption import (
    CredentialCipher,
    CredentialDecryptionError,
    Sealed,
    credential_hint,
    key_id,
    parse_key,
)

KEY = os.urandom(32)
ROW = "runtime_deployments/chat/dep_0123456789abcdef"
SECRET = "sk-unit-test-credential-1234"


def test_a_sealed_value_opens_for_its_row_and_hides_the_plaintext() -> None:
    cipher = CredentialCipher(KEY)
    token = cipher.encrypt(SECRET, ROW)
    assert cipher.decrypt(token, ROW) == SECRET
    assert SECRET not in token and base64.b64encode(SECRET.encode()).decode()[:16] not in token
    assert token.startswith(f"v1.{key_id(KEY)}.")


def test_each_value_gets_a_fresh_nonce() -> None:
    cipher = CredentialCipher(KEY)
    first, second = cipher.encrypt(SECRET, ROW), cipher.encrypt(SECRET, ROW)
    assert first != second
    assert Sealed.parse(first).blob[:12] != Sealed.parse(second).blob[:12]


def test_a_value_moved_to_another_row_does_not_open() -> None:
    cipher = CredentialCipher(KEY)
    token = cipher.encrypt(SECRET, ROW)
    with pytest.raises(CredentialDecryptionError, match="sealed for another row") as caught:
        cipher.decrypt(token, "runtime_deployments/other/dep_fedcba9876543210")
    assert SECRET not in str(caught.value)


def test_a_tampered_value_does_not_open() -> None:
    cipher = CredentialCipher(KEY)
    sealed = Sealed.parse(cipher.encrypt(SECRET, ROW))
    flipped = bytes([sealed.blob[-1] ^ 1])
    with pytest.raises(CredentialDecryptionError):
        cipher.decrypt(str(Sealed(sealed.key_id, sealed.blob[:-1] + flipped)), ROW)
    with pytest.raises(CredentialDecryptionError, match="not in a known format"):
        cipher.decrypt("plain-text-credential", ROW)


def test_previous_keys_open_old_values_and_only_the_current_one_seals() -> None:
    old, new = os.urandom(32), os.urandom(32)
    token = CredentialCipher(old).encrypt(SECRET, ROW)
    rotated = CredentialCipher(new, [old])
    assert rotated.has_previous_keys and not rotated.is_current(token)
    assert rotated.decrypt(token, ROW) == SECRET
    resealed = rotated.encrypt(SECRET, ROW)
    assert rotated.is_current(resealed)
    assert CredentialCipher(new).decrypt(resealed, ROW) == SECRET
    with pytest.raises(CredentialDecryptionError, match=key_id(old)) as caught:
        CredentialCipher(new).decrypt(token, ROW)
    assert base64.b64encode(old).decode() not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        KEY.hex(),
        KEY.hex().upper(),
        f"  {KEY.hex()}\n",
    ],
)
def test_keys_are_read_as_base64_or_hex(text: str) -> None:
    assert parse_key(text, "encryption.key") == KEY


@pytest.mark.parametrize("text", ["", "short", base64.b64encode(os.urandom(16)).decode(), "zz" * 32])
def test_a_malformed_key_names_the_setting_and_not_the_value(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_key(text, "encryption.key")
    assert caught.value.problems[0][0] == "encryption.key"
    assert not text or text not in str(caught.value)


def test_the_key_comes_from_the_environment_or_a_secret_reference(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("models: []\n")
    text = base64.b64encode(KEY).decode()
    settings = load_settings(config, {"FERRYMAN_ENCRYPTION_KEY": text})
    assert settings.encryption.key is not None and settings.encryption.key.get_secret_value() == text
    secret_file = tmp_path / "encryption-key"
    secret_file.write_text(KEY.hex())
    previous = base64.b64encode(os.urandom(32)).decode()
    environ = {"FERRYMAN_ENCRYPTION_KEY": f"file:{secret_file}", "FERRYMAN_ENCRYPTION_KEY_PREVIOUS": previous}
    settings = load_settings(config, environ)
    assert settings.encryption.key is not None and settings.encryption.key.get_secret_value() == KEY.hex()
    assert [k.get_secret_value() for k in settings.encryption.previous_keys] == [previous]


def test_a_bad_key_in_the_environment_fails_start_up_by_name(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("models: []\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {"FERRYMAN_ENCRYPTION_KEY": "not-a-key-at-all"})
    assert caught.value.problems[0][0] == "encryption"
    assert "FERRYMAN_ENCRYPTION_KEY" in str(caught.value)
    assert "not-a-key-at-all" not in str(caught.value)


def test_the_hint_is_the_last_four_characters_only() -> None:
    assert credential_hint(SECRET) == "…1234"
    assert credential_hint("short") == "…"  # too short to show any of it
