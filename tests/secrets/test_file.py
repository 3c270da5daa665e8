"""`file:` references (Kubernetes secret mounts): resolved in every secret field, refreshed, and failing
with errors that name the reference and never the value."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ferryman.cli import main as ferryman
from ferryman.errors import ConfigError
from ferryman.secret_refs import SecretRefresher, SecretValue
from ferryman.settings import Settings
from tests.secrets.conftest import openai_config

OLD = "sk-file-old-0123456789abcdef"
NEW = "sk-file-new-fedcba9876543210"
API_KEY_PATH = "models[0].deployments[0].api_key"


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def rotate(path: Path, text: str) -> None:
    """Replace the file at once, as the kubelet does (a new file swapped in, never a half-written one)."""
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(text)
    os.replace(staged, path)


async def until_value(holder: SecretValue, value: str) -> None:
    """Wait until `holder` reads `value`; fail after 5 s."""
    for _ in range(250):
        if holder.get_secret_value() == value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the secret was not refreshed within 5 s")


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record's message and extra fields, as one string to search for values in."""
    return "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)


def test_file_references_resolve_in_every_secret_field(tmp_path: Path, load_config: Any) -> None:
    files = {
        name: secret_file(tmp_path, name, value + "\n")
        for name, value in {
            "master": "sk-master-value-000000",
            "openai": OLD,
            "metrics": "metrics-token-value",
            "database": "sqlite+aiosqlite:///" + str(tmp_path / "db.sqlite"),
            "redis": "redis://:pa55word@127.0.0.1:6379/0",
            "client": "fm-client-key-value-1234",
            "webhook": "https://hooks.example.com/T000/secret-path",
            "org": "org-from-a-file",
        }.items()
    }
    config = openai_config(
        f"file:{files['openai']}",
        master_key=f"file:{files['master']}",
        metrics={"token": f"file:{files['metrics']}"},
        database_url=f"file:{files['database']}",
        redis_url=f"file:{files['redis']}",
        keys=[{"alias": "app", "key": f"file:{files['client']}"}],
        budgets={"alert_webhook_url": f"file:{files['webhook']}"},
    )
    config["models"][0]["deployments"][0]["headers"] = {"OpenAI-Organization": f"file:{files['org']}"}
    settings: Settings = load_config(config)

    deployment = settings.models[0].deployments[0]
    assert isinstance(deployment.api_key, SecretValue)
    assert deployment.api_key.get_secret_value() == OLD
    assert deployment.headers == {"OpenAI-Organization": "org-from-a-file"}
    assert (
        settings.master_key is not None and settings.master_key.get_secret_value() == "sk-master-value-000000"
    )
    assert settings.metrics.token is not None
    assert settings.metrics.token.get_secret_value() == "metrics-token-value"
    assert settings.database_url == "sqlite+aiosqlite:///" + str(tmp_path / "db.sqlite")
    assert settings.redis_url == "redis://:pa55word@127.0.0.1:6379/0"
    assert (
        settings.keys[0].key is not None
        and settings.keys[0].key.get_secret_value() == "fm-client-key-value-1234"
    )
    assert settings.budgets.alert_webhook_url == "https://hooks.example.com/T000/secret-path"
    refreshed = SecretRefresher.for_settings(settings, 300).paths
    assert sorted(refreshed) == ["metrics.token", API_KEY_PATH]  # the others are read once, at start-up


@pytest.mark.parametrize(("text", "value"), [("k-1\n", "k-1"), ("k-2\r\n", "k-2"), ("  k 3  \n", "  k 3  ")])
def test_only_the_trailing_newline_is_stripped(
    tmp_path: Path, load_config: Any, text: str, value: str
) -> None:
    settings = load_config(openai_config(f"file:{secret_file(tmp_path, 'openai', text)}"))
    assert settings.models[0].deployments[0].api_key.get_secret_value() == value


def test_a_field_of_a_json_file_and_the_environment_inside_a_reference(
    tmp_path: Path, load_config: Any
) -> None:
    secret_file(tmp_path, "all.json", json.dumps({"openai": OLD, "anthropic": "sk-ant-other"}))
    settings = load_config(
        openai_config("file:${SECRETS_DIR}/all.json#openai"), {"SECRETS_DIR": str(tmp_path / "secrets")}
    )
    assert settings.models[0].deployments[0].api_key.get_secret_value() == OLD


def test_a_reference_outside_the_secret_fields_is_left_as_written(tmp_path: Path, load_config: Any) -> None:
    config = openai_config(OLD)
    config["models"][0]["deployments"][0]["name"] = "file:/not/a/secret"
    settings = load_config(config)
    assert settings.models[0].deployments[0].name == "file:/not/a/secret"
    assert not isinstance(settings.models[0].deployments[0].api_key, SecretValue)


@pytest.mark.parametrize(
    ("contents", "suffix", "complaint"),
    [
        (None, "", "cannot read the file: No such file or directory"),
        ("", "", "the secret is empty"),
        (f"{OLD}\n", "#openai", "is not a JSON object"),
        (json.dumps({"anthropic": OLD}), "#openai", "has no field 'openai'"),
        (json.dumps({"openai": OLD, "nested": {"x": OLD}}), "#nested", "field 'nested' is not a string"),
        (json.dumps({"openai": OLD}), "", None),  # a whole JSON file is a valid (if odd) key
    ],
)
def test_an_unresolvable_reference_is_an_error_naming_it_and_its_key_path_never_the_value(
    tmp_path: Path, load_config: Any, contents: str | None, suffix: str, complaint: str | None
) -> None:
    path = tmp_path / "secrets" / "openai"
    if contents is not None:
        secret_file(tmp_path, "openai", contents)
    reference = f"file:{path}{suffix}"
    if complaint is None:
        load_config(openai_config(reference))
        return
    with pytest.raises(ConfigError) as caught:
        load_config(openai_config(reference))
    [(key_path, message)] = caught.value.problems
    assert key_path == API_KEY_PATH
    assert f"cannot resolve secret reference {reference!r}" in message
    assert complaint in message
    assert OLD not in str(caught.value)


def test_check_config_reports_an_unresolvable_reference_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file(tmp_path, "all.json", json.dumps({"anthropic": OLD}))
    reference = f"file:{tmp_path / 'secrets' / 'all.json'}#openai"
    config = tmp_path / "ferryman.yaml"
    config.write_text(json.dumps(openai_config(reference)))  # JSON is YAML
    assert ferryman(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{API_KEY_PATH}: cannot resolve secret reference {reference!r}: the secret has no field" in err
    assert OLD not in err


async def test_a_refresh_picks_up_a_rewritten_file_and_logs_the_rotation_without_the_value(
    tmp_path: Path, load_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = secret_file(tmp_path, "openai", OLD)
    settings = load_config(openai_config(f"file:{path}"))
    holder = settings.models[0].deployments[0].api_key
    refresher = SecretRefresher.for_settings(settings, 0)
    assert await refresher.refresh() == []  # nothing changed yet
    rotate(path, NEW + "\n")
    with caplog.at_level(logging.INFO, logger="ferryman.secret_refs"):
        assert await refresher.refresh() == [API_KEY_PATH]
    assert holder.get_secret_value() == NEW
    assert any(r.getMessage() == f"secret rotated: {API_KEY_PATH}" for r in caplog.records)
    assert f"file:{path}" in logged(caplog)
    assert OLD not in logged(caplog) and NEW not in logged(caplog)


async def test_a_failed_refresh_keeps_the_last_value_and_logs_the_reference_only(
    tmp_path: Path, load_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = secret_file(tmp_path, "openai", json.dumps({"openai": OLD}))
    settings = load_config(openai_config(f"file:{path}#openai"))
    refresher = SecretRefresher.for_settings(settings, 0)
    rotate(path, json.dumps({"renamed": NEW}))
    with caplog.at_level(logging.INFO, logger="ferryman.secret_refs"):
        assert await refresher.refresh() == []
    assert settings.models[0].deployments[0].api_key.get_secret_value() == OLD
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"file:{path}#openai" in warning.getMessage()
    assert "has no field 'openai'" in warning.getMessage()
    assert OLD not in logged(caplog) and NEW not in logged(caplog)


async def test_the_interval_refreshes_in_the_background(tmp_path: Path, load_config: Any) -> None:
    path = secret_file(tmp_path, "openai", OLD)
    settings = load_config(openai_config(f"file:{path}"))
    holder = settings.models[0].deployments[0].api_key
    refresher = SecretRefresher.for_settings(settings, 0.05)
    await refresher.start()
    try:
        rotate(path, NEW)
        await until_value(holder, NEW)
    finally:
        await refresher.aclose()


async def test_sighup_refreshes_and_is_given_back_on_close(tmp_path: Path, load_config: Any) -> None:
    path = secret_file(tmp_path, "openai", OLD)
    settings = load_config(openai_config(f"file:{path}"))
    holder = settings.models[0].deployments[0].api_key
    refresher = SecretRefresher.for_settings(settings, 0)  # no interval: only SIGHUP refreshes
    await refresher.start()
    try:
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        rotate(path, NEW)
        os.kill(os.getpid(), signal.SIGHUP)
        await until_value(holder, NEW)
    finally:
        await refresher.aclose()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
