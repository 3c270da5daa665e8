"""`vault:` references through hvac against a loopback server speaking Vault's KV v2 HTTP API."""

from __future__ import annotations

from typing import Any

import pytest

from ferryman.errors import ConfigError
from ferryman.secret_refs import SecretRefresher
from tests.secrets.conftest import VAULT_TOKEN, openai_config
from tests.secrets.fake_vault import FakeVault

OLD = "sk-vault-old-0123456789abcdef"
NEW = "sk-vault-new-fedcba9876543210"
API_KEY_PATH = "models[0].deployments[0].api_key"


@pytest.mark.parametrize(
    ("reference", "mount", "path"),
    [
        ("vault:secret/data/ferryman#openai", "secret", "ferryman"),
        ("vault:secret/ferryman#openai", "secret", "ferryman"),
        ("vault:ferryman#openai", "secret", "ferryman"),
        ("vault:kv/team/data/apps/llm#openai", "kv/team", "apps/llm"),
    ],
)
def test_each_spelling_reads_the_kv_v2_secret_with_the_token(
    vault: FakeVault, vault_env: dict[str, str], load_config: Any, reference: str, mount: str, path: str
) -> None:
    vault.put(mount, path, {"openai": OLD, "anthropic": "sk-ant-vault"})
    settings = load_config(openai_config(reference))
    assert settings.models[0].deployments[0].api_key.get_secret_value() == OLD
    assert vault.reads == [f"/v1/{mount}/data/{path}"]


def test_the_address_and_token_may_come_from_the_given_environment(
    vault: FakeVault, load_config: Any
) -> None:
    vault.put("secret", "ferryman", {"openai": OLD})
    settings = load_config(
        openai_config("vault:secret/ferryman#openai"), {"VAULT_ADDR": vault.url, "VAULT_TOKEN": VAULT_TOKEN}
    )
    assert settings.models[0].deployments[0].api_key.get_secret_value() == OLD


async def test_a_new_version_is_picked_up_by_a_refresh(
    vault: FakeVault, vault_env: dict[str, str], load_config: Any
) -> None:
    vault.put("secret", "ferryman", {"openai": OLD})
    settings = load_config(openai_config("vault:secret/data/ferryman#openai"))
    refresher = SecretRefresher.for_settings(settings, 0)
    vault.put("secret", "ferryman", {"openai": NEW})
    assert await refresher.refresh() == [API_KEY_PATH]
    assert settings.models[0].deployments[0].api_key.get_secret_value() == NEW


@pytest.mark.parametrize(
    ("reference", "environ", "complaint"),
    [
        ("vault:secret/ferryman#openai", {"VAULT_TOKEN": "hvs.wrong"}, "Vault refused the token (403)"),
        ("vault:secret/elsewhere#openai", {}, "Vault has no secret 'elsewhere' in mount 'secret'"),
        ("vault:secret/ferryman", {}, "the secret holds several fields: name one with '#field'"),
        ("vault:secret/ferryman#missing", {}, "the secret has no field 'missing'"),
        ("vault:secret/ferryman#openai", {"VAULT_ADDR": ""}, "VAULT_ADDR is not set"),
        ("vault:secret/ferryman#openai", {"VAULT_ADDR": "http://127.0.0.1:9"}, "Vault could not be reached"),
    ],
)
def test_an_unreadable_secret_is_an_error_naming_the_reference_never_the_value(
    vault: FakeVault,
    vault_env: dict[str, str],
    load_config: Any,
    reference: str,
    environ: dict[str, str],
    complaint: str,
) -> None:
    vault.put("secret", "ferryman", {"openai": OLD, "other": "x"})
    with pytest.raises(ConfigError) as caught:
        load_config(openai_config(reference), {**vault_env, **environ})
    [(key_path, message)] = caught.value.problems
    assert key_path == API_KEY_PATH
    assert message.startswith(f"cannot resolve secret reference {reference!r}: ")
    assert complaint in message
    assert OLD not in str(caught.value) and VAULT_TOKEN not in str(caught.value)
