"""The client's address: `X-Forwarded-For` believed only from `server.trusted_proxies`, read from the right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.api.client_ip import TrustedProxies
from ferryman.errors import ConfigError
from ferryman.settings import settings_from_mapping
from tests.processes import gateway_process

FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "who am i"}]}
PROXIES = TrustedProxies(["10.0.0.0/8", "192.168.1.1", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("203.0.113.5", None, "203.0.113.5"),  # no header: the peer
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # untrusted peer: header ignored
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),  # one trusted proxy
        ("10.0.0.2", "198.51.100.1, 192.168.1.1", "198.51.100.1"),  # two trusted hops skipped
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"),  # forged left entries ignored
        ("10.0.0.2", "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # every hop trusted: the farthest
        ("10.0.0.2", "198.51.100.1:4711", "198.51.100.1"),  # a port is dropped
        ("10.0.0.2", "unknown, 10.2.2.2", "10.2.2.2"),  # not an address: the walk stops there
        ("10.0.0.2", "", "10.0.0.2"),  # empty header: the peer
        ("fd00::1", "[2001:db8::7]:443", "2001:db8::7"),  # IPv6, bracketed with a port
        ("fd00::1", "2001:db8::8", "2001:db8::8"),
    ],
)
def test_client_is_the_right_most_untrusted_address(
    peer: str, forwarded_for: str | None, client: str
) -> None:
    assert PROXIES.client_address(peer, forwarded_for) == client


def test_no_trusted_proxies_trusts_nobody() -> None:
    nobody = TrustedProxies([])
    assert not nobody
    assert nobody.client_address("127.0.0.1", "198.51.100.1") == "127.0.0.1"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.internal"]}})
    [(path, message)] = caught.value.problems
    assert path == "server.trusted_proxies"
    assert "proxy.internal" in message


def test_trusted_proxies_are_normalized_to_networks() -> None:
    settings = settings_from_mapping({"server": {"trusted_proxies": ["10.1.2.3/8", "127.0.0.1", "::1"]}})
    assert settings.server.trusted_proxies == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]


def logged_client_ips(tmp_path: Path) -> list[str | None]:
    [log] = tmp_path.glob("gateway-*.log")
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["client_ip"] for line in lines if line.get("message") == "request"]


def call_with_forwarded_for(config: dict[str, Any], tmp_path: Path, chain: str) -> None:
    with gateway_process(config, tmp_path) as (_, url):
        response = httpx.post(
            url + "/v1/chat/completions", json=CHAT, headers={"x-forwarded-for": chain}, timeout=10
        )
        assert response.status_code == 200, response.text


def test_access_log_records_the_client_a_trusted_proxy_names(tmp_path: Path) -> None:
    config = {"models": [FAKE], "server": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}}
    call_with_forwarded_for(config, tmp_path, "6.6.6.6, 203.0.113.7, 10.20.30.40")
    assert logged_client_ips(tmp_path) == ["203.0.113.7"]


def test_access_log_ignores_forwarded_for_from_an_untrusted_peer(tmp_path: Path) -> None:
    config = {"models": [FAKE], "server": {"trusted_proxies": ["10.0.0.0/8"]}}
    call_with_forwarded_for(config, tmp_path, "203.0.113.7")
    assert logged_client_ips(tmp_path) == ["127.0.0.1"]


def test_by_default_no_proxy_is_trusted_not_even_loopback(tmp_path: Path) -> None:
    call_with_forwarded_for({"models": [FAKE]}, tmp_path, "203.0.113.7")
    assert logged_client_ips(tmp_path) == ["127.0.0.1"]
