"""`aws-sm:` references against moto's server mode: a real HTTP endpoint, boto3 pointed at it through
the standard AWS variables."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest

from ferryman.errors import ConfigError
from ferryman.secret_refs import SecretRefresher
from tests.secrets.conftest import openai_config

OLD = "sk-aws-old-0123456789abcdef"
NEW = "sk-aws-new-fedcba9876543210"
OTHER = "sk-ant-aws-other-55555555"
API_KEY_PATH = "models[0].deployments[0].api_key"


@pytest.fixture
def secrets_manager(aws_env: dict[str, str]) -> Any:
    """A boto3 Secrets Manager client on the moto server, as an operator's tooling would hold one."""
    return boto3.client(
        "secretsmanager",
        endpoint_url=aws_env["AWS_ENDPOINT_URL_SECRETS_MANAGER"],
        region_name=aws_env["AWS_DEFAULT_REGION"],
    )


def new_secret(client: Any, value: str) -> str:
    name = f"ferryman/test-{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString=value)
    return name


def test_a_field_of_a_json_secret_and_a_whole_string_secret_resolve(
    secrets_manager: Any, load_config: Any
) -> None:
    both = new_secret(secrets_manager, json.dumps({"openai": OLD, "anthropic": OTHER}))
    whole = new_secret(secrets_manager, "sk-whole-string-secret")
    config = openai_config(f"aws-sm:{both}#openai", master_key=f"aws-sm:{whole}")
    anthropic = {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key": f"aws-sm:{both}#anthropic"}
    config["models"].append({"name": "claude", "deployments": [anthropic]})
    settings = load_config(config)
    assert settings.models[0].deployments[0].api_key.get_secret_value() == OLD
    assert settings.models[1].deployments[0].api_key.get_secret_value() == OTHER
    assert settings.master_key.get_secret_value() == "sk-whole-string-secret"


async def test_a_rotated_secret_is_picked_up_by_a_refresh(secrets_manager: Any, load_config: Any) -> None:
    name = new_secret(secrets_manager, json.dumps({"openai": OLD}))
    settings = load_config(openai_config(f"aws-sm:{name}#openai"))
    holder = settings.models[0].deployments[0].api_key
    refresher = SecretRefresher.for_settings(settings, 0)
    secrets_manager.put_secret_value(SecretId=name, SecretString=json.dumps({"openai": NEW}))
    assert await refresher.refresh() == [API_KEY_PATH]
    assert holder.get_secret_value() == NEW


@pytest.mark.parametrize(
    ("stored", "suffix", "complaint"),
    [
        (None, "#openai", "Secrets Manager answered ResourceNotFoundException"),
        (json.dumps({"anthropic": OLD}), "#openai", "the secret has no field 'openai'"),
        (OLD, "#openai", "is not a JSON object"),
    ],
)
def test_an_unresolvable_secret_is_an_error_naming_the_reference_never_the_value(
    secrets_manager: Any, load_config: Any, stored: str | None, suffix: str, complaint: str
) -> None:
    name = new_secret(secrets_manager, stored) if stored is not None else "ferryman/does-not-exist"
    reference = f"aws-sm:{name}{suffix}"
    with pytest.raises(ConfigError) as caught:
        load_config(openai_config(reference))
    [(key_path, message)] = caught.value.problems
    assert key_path == API_KEY_PATH
    assert message.startswith(f"cannot resolve secret reference {reference!r}: ")
    assert complaint in message
    assert OLD not in str(caught.value)


def test_a_secret_read_for_two_fields_is_fetched_once(
    secrets_manager: Any, load_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = new_secret(secrets_manager, json.dumps({"openai": OLD, "anthropic": OTHER}))
    calls: list[str] = []
    original = boto3.session.Session.client

    def counting_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register(
            "before-call.secrets-manager.GetSecretValue", lambda **_: calls.append("x")
        )
        return client

    monkeypatch.setattr(boto3.session.Session, "client", counting_client)
    config = openai_config(f"aws-sm:{name}#openai", master_key=f"aws-sm:{name}#anthropic")
    settings = load_config(config)
    assert settings.master_key.get_secret_value() == OTHER
    assert calls == ["x"]


def test_the_generic_endpoint_and_credentials_may_come_from_the_given_environment(
    secrets_manager: Any, load_config: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = new_secret(secrets_manager, json.dumps({"openai": OLD}))
    for variable in aws_env:
        monkeypatch.delenv(variable)
    environ = {
        "AWS_ENDPOINT_URL": aws_env["AWS_ENDPOINT_URL_SECRETS_MANAGER"],
        "AWS_REGION": aws_env["AWS_DEFAULT_REGION"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    settings = load_config(openai_config(f"aws-sm:{name}#openai"), environ)
    assert settings.models[0].deployments[0].api_key.get_secret_value() == OLD
