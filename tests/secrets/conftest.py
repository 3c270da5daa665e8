"""Fixtures for secret references: a moto server standing in for AWS Secrets Manager, a KV v2 Vault."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ferryman.settings import Settings, load_settings
from tests.processes import free_port
from tests.secrets.fake_vault import FakeVault

VAULT_TOKEN = "hvs.test-root-token"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """moto in server mode on a free loopback port (a real HTTP endpoint); its URL. Stopped by PID."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing boto3 at the moto server (also set in os.environ)."""
    env = {
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    """A KV v2 Vault on loopback that takes `VAULT_TOKEN`."""
    with FakeVault(VAULT_TOKEN, mounts=("secret", "kv/team")) as server:
        yield server


@pytest.fixture
def vault_env(vault: FakeVault, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """VAULT_ADDR and VAULT_TOKEN for `vault` (also set in os.environ)."""
    env = {"VAULT_ADDR": vault.url, "VAULT_TOKEN": VAULT_TOKEN}
    monkeypatch.delenv("VAULT_NAMESPACE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def load_config(tmp_path: Path) -> Callable[..., Settings]:
    """Write a config mapping to a YAML file and load it the way `serve` does (references resolved)."""

    def load(config: dict[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        path = tmp_path / "ferryman.yaml"
        path.write_text(yaml.safe_dump(config))
        return load_settings(path, environ)

    return load


def openai_config(api_key: str, **top_level: Any) -> dict[str, Any]:
    """A one-model config whose deployment's api_key is `api_key` (a reference, usually)."""
    deployment = {"provider": "openai", "model": "gpt-4o-mini", "api_key": api_key}
    return {"models": [{"name": "gpt-4o-mini", "deployments": [deployment]}], **top_level}
