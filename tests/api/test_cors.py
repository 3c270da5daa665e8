"""CORS: off unless origins are listed; then only those origins, preflights answered before any key check."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ferryman.errors import ConfigError
from ferryman.settings import settings_from_mapping
from tests.conftest import RunningGateway

MASTER = "sk-cors-master-0123456789abcdef"
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
ALLOWED = "https://app.example.com"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def preflight(gateway: RunningGateway, origin: str, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    return httpx.options(gateway.url + path, headers=headers, timeout=10)


def test_by_default_no_origin_is_allowed(gateway_factory: Any) -> None:
    gateway = gateway_factory({"master_key": MASTER, "models": [FAKE]})
    assert "access-control-allow-origin" not in preflight(gateway, ALLOWED).headers
    answer = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=CHAT,
        headers={"origin": ALLOWED, "authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_a_listed_origin_gets_preflights_and_answers_and_others_get_nothing(gateway_factory: Any) -> None:
    gateway = gateway_factory(
        {"master_key": MASTER, "models": [FAKE], "server": {"cors": {"allow_origins": [ALLOWED]}}}
    )
    allowed = preflight(gateway, ALLOWED)
    assert allowed.status_code == 200  # answered before the key check: a preflight carries no key
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers

    refused = preflight(gateway, "https://evil.example.net")
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

    answer = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=CHAT,
        headers={"origin": ALLOWED, "authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
    # The key check itself is unchanged for cross-origin calls.
    unkeyed = httpx.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"origin": ALLOWED}, timeout=10
    )
    assert unkeyed.status_code == 401


def test_credentials_for_any_origin_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.cors"):
        settings_from_mapping({"server": {"cors": {"allow_origins": ["*"], "allow_credentials": True}}})
