"""`server.admin_port`: the admin API answers only on its own port, and that port answers nothing else
but the probes; one process (one state) serves both, with one worker or several."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, gateway_process

MASTER = "sk-admin-port-master-0123456789"
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {MASTER}"}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_admin_api_lives_on_its_own_port_only(tmp_path: Path, workers: int) -> None:
    admin_port = free_port()
    config = {"master_key": MASTER, "models": [FAKE], "server": {"admin_port": admin_port}}
    with gateway_process(config, tmp_path, workers=workers) as (_, public):
        admin = f"http://127.0.0.1:{admin_port}"
        hidden = httpx.get(public + "/admin/keys", headers=AUTH, timeout=10)
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "route_not_found"

        created = httpx.post(
            admin + "/admin/keys", json={"alias": "via-admin-port"}, headers=AUTH, timeout=10
        )
        assert created.status_code in (200, 201), created.text
        key = created.json()["key"]
        # The key made on the admin port works on the public one: one state behind both listeners.
        answered = httpx.post(
            public + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}, timeout=10
        )
        assert answered.status_code == 200, answered.text

        assert (
            httpx.post(admin + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10).status_code == 404
        )
        assert httpx.get(admin + "/health/ready", timeout=10).status_code == 200  # probes answer on both
        assert httpx.get(public + "/health/ready", timeout=10).status_code == 200
