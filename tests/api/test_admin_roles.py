"""Roles through the admin API: set on create and PATCH, validated (400 naming `role`), shown on the key,
in force at once when changed, and given to config-file keys too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway, serve_gateway

MASTER = "roles-master-key-for-tests"
CONFIG_VIEWER = "fm-config-viewer-key-for-tests"
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    config = {
        "master_key": MASTER,
        "models": [FAKE],
        "keys": [{"alias": "config-viewer", "key": CONFIG_VIEWER, "role": "viewer"}],
    }
    with serve_gateway(config) as running:
        yield running


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}) as client:
        yield client


def as_key(gateway: RunningGateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"})


def create(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/admin/keys", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_key_has_no_role_unless_given_one(admin: httpx.Client) -> None:
    assert create(admin)["role"] is None
    made = create(admin, role="viewer")
    assert made["role"] == "viewer"
    assert admin.get(f"/admin/keys/{made['id']}").json()["role"] == "viewer"


@pytest.mark.parametrize("role", ["root", "Admin ", "", 1, ["admin"]])
def test_a_bad_role_is_a_400_naming_the_field(admin: httpx.Client, role: object) -> None:
    for response in (
        admin.post("/admin/keys", json={"role": role}),
        admin.patch(f"/admin/keys/{create(admin)['id']}", json={"role": role}),
    ):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "role"
        assert "role" in error["message"]


def test_raising_and_lowering_a_role_takes_effect_at_once(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    made = create(admin, alias="promoted")
    with as_key(gateway, made["key"]) as key:
        assert key.get("/admin/keys").status_code == 403
        assert admin.patch(f"/admin/keys/{made['id']}", json={"role": "viewer"}).json()["role"] == "viewer"
        assert key.get("/admin/keys").status_code == 200
        assert key.post("/admin/teams", json={}).status_code == 403
        assert admin.patch(f"/admin/keys/{made['id']}", json={"role": "admin"}).json()["role"] == "admin"
        assert key.post("/admin/teams", json={}).status_code == 201
        assert admin.patch(f"/admin/keys/{made['id']}", json={"role": None}).json()["role"] is None
        refused = key.get("/admin/keys")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_required"


def test_a_patch_without_role_keeps_it(admin: httpx.Client) -> None:
    made = create(admin, role="admin")
    assert admin.patch(f"/admin/keys/{made['id']}", json={"alias": "renamed"}).json()["role"] == "admin"


def test_a_viewer_cannot_make_keys_let_alone_raise_one(admin: httpx.Client, gateway: RunningGateway) -> None:
    viewer = create(admin, role="viewer")
    with as_key(gateway, viewer["key"]) as key:
        for response in (
            key.post("/admin/keys", json={"role": "admin"}),
            key.patch(f"/admin/keys/{viewer['id']}", json={"role": "admin"}),
        ):
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "admin_role_required"
    assert admin.get(f"/admin/keys/{viewer['id']}").json()["role"] == "viewer"


def test_a_config_key_with_a_role_reads_but_does_not_write(gateway: RunningGateway) -> None:
    with as_key(gateway, CONFIG_VIEWER) as key:
        assert key.get("/admin/keys").status_code == 200
        refused = key.post("/admin/teams", json={})
        records = key.get("/admin/audit", params={"actor": "config-viewer"}).json()["data"]
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_role_required"
    assert (records[0]["actor_id"], records[0]["role"], records[0]["status"]) == (
        "static:config-viewer",
        "viewer",
        403,
    )


def test_the_schema_documents_role_and_the_audit_log(gateway: RunningGateway) -> None:
    schema = httpx.get(gateway.url + "/openapi.json").json()
    key_body = schema["components"]["schemas"]["KeyBody"]["properties"]["role"]
    [choices] = [option["enum"] for option in key_body["anyOf"] if "enum" in option]
    assert choices == ["viewer", "admin"]
    audit = schema["paths"]["/admin/audit"]["get"]
    assert {p["name"] for p in audit["parameters"]} >= {
        "since",
        "until",
        "actor",
        "action",
        "limit",
        "cursor",
    }
    assert audit["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("AuditPageOut")
    assert "403" in audit["responses"]
