"""The authorization matrix: every kind of caller against representative admin and model routes, with the
exact status each cell must answer and, for refusals, the OpenAI-shaped error that says why.

One gateway on the embedded SQLite store serves the whole matrix; the callers are made through the admin
API (revoked and expired keys included), and each row of the matrix is one route with the status every
caller must get. A change in who may do what shows up here as one named cell.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ferryman.api.admin import admin_router
from ferryman.api.audit import AuditedRoute, admit_admin
from tests.conftest import RunningGateway, serve_gateway

MASTER = "matrix-master-key-for-tests"
FREE = {"input_per_mtok": 0, "output_per_mtok": 0}
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model", "price": FREE}]}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}

CALLERS = ("none", "master", "admin", "viewer", "plain", "team", "revoked", "expired")


@dataclass(frozen=True)
class World:
    """The running gateway, each caller's key (`None`: send none), and the ids the routes act on."""

    gateway: RunningGateway
    keys: dict[str, str | None]
    patch_victim: str
    delete_victim: str
    deployment: str


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with serve_gateway({"master_key": MASTER, "models": [FAKE]}) as gateway:
        with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}) as admin:

            def key(**body: Any) -> dict[str, Any]:
                response = admin.post("/admin/keys", json=body)
                assert response.status_code == 201, response.text
                return dict(response.json())

            team = admin.post("/admin/teams", json={"alias": "matrix-team"}).json()["id"]
            revoked = key(alias="revoked", role="admin")
            assert admin.delete(f"/admin/keys/{revoked['id']}").status_code == 200
            deployments = admin.get("/admin/deployments").json()["data"]
            keys: dict[str, str | None] = {
                "none": None,
                "master": MASTER,
                "admin": key(alias="an-admin", role="admin")["key"],
                "viewer": key(alias="a-viewer", role="viewer")["key"],
                "plain": key(alias="plain")["key"],
                "team": key(alias="in-team", team_id=team)["key"],
                "revoked": revoked["key"],
                # An admin key, so the 401 is the expiry's and not the missing role's.
                "expired": key(alias="expired", role="admin", expires_at="2020-01-01T00:00:00Z")["key"],
            }
            yield World(
                gateway,
                keys,
                patch_victim=key(alias="patch-victim")["id"],
                delete_victim=key(alias="delete-victim")["id"],
                deployment=deployments[0]["deployment"],
            )


# (method, path, body), then the status for each caller in CALLERS order:
#  none, master, admin, viewer, plain, team, revoked, expired
MATRIX: dict[str, tuple[tuple[str, str, dict[str, Any] | None], tuple[int, ...]]] = {
    "list keys": (("GET", "/admin/keys", None), (401, 200, 200, 200, 403, 403, 401, 401)),
    "create key": (("POST", "/admin/keys", {"alias": "made"}), (401, 201, 201, 403, 403, 403, 401, 401)),
    "update key": (
        ("PATCH", "/admin/keys/{patch_victim}", {"metadata": {"touched": True}}),
        (401, 200, 200, 403, 403, 403, 401, 401),
    ),
    "revoke key": (("DELETE", "/admin/keys/{delete_victim}", None), (401, 200, 200, 403, 403, 403, 401, 401)),
    "list teams": (("GET", "/admin/teams", None), (401, 200, 200, 200, 403, 403, 401, 401)),
    "create team": (("POST", "/admin/teams", {"alias": "t"}), (401, 201, 201, 403, 403, 403, 401, 401)),
    "spend": (("GET", "/admin/spend", None), (401, 200, 200, 200, 403, 403, 401, 401)),
    "deployments": (("GET", "/admin/deployments", None), (401, 200, 200, 200, 403, 403, 401, 401)),
    "reset deployment": (
        ("POST", "/admin/deployments/{deployment}/reset", None),
        (401, 200, 200, 403, 403, 403, 401, 401),
    ),
    "audit log": (("GET", "/admin/audit", None), (401, 200, 200, 200, 403, 403, 401, 401)),
    # Keys with an admin role are client keys too, governed like any other; the master key as well.
    "chat": (("POST", "/v1/chat/completions", CHAT), (401, 200, 200, 200, 200, 200, 401, 401)),
    # Usage is per virtual key: the master key has none to report (400 `virtual_key_required`).
    "own usage": (("GET", "/v1/usage", None), (401, 400, 200, 200, 200, 200, 401, 401)),
}

CELLS = [
    pytest.param(route, caller, statuses[i], id=f"{route}-{caller}")
    for route, (_, statuses) in MATRIX.items()
    for i, caller in enumerate(CALLERS)
]

# The refusals' errors: (type, code) by status and caller.
NO_KEY = ("authentication_error", "invalid_api_key")
NO_ROLE = ("permission_error", "admin_required")
READ_ONLY = ("permission_error", "admin_role_required")


def expected_error(caller: str, status: int) -> tuple[str, str]:
    if status == 401:
        return NO_KEY
    return READ_ONLY if caller == "viewer" else NO_ROLE


@pytest.mark.parametrize(("route", "caller", "status"), CELLS)
def test_each_caller_gets_exactly_its_status_on_each_route(
    world: World, route: str, caller: str, status: int
) -> None:
    (method, template, body), _ = MATRIX[route]
    path = template.format(
        patch_victim=world.patch_victim, delete_victim=world.delete_victim, deployment=world.deployment
    )
    key = world.keys[caller]
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    response = httpx.request(method, world.gateway.url + path, json=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    if status in (401, 403):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == expected_error(caller, status)
        assert error["message"]
        for secret in (MASTER, *(k for k in world.keys.values() if k)):
            assert secret not in response.text


def test_a_viewer_refused_a_change_is_counted_as_an_auth_failure(world: World) -> None:
    counter = world.gateway.metrics.auth_failures.labels("forbidden_role")
    before = counter._value.get()
    response = httpx.post(
        world.gateway.url + "/admin/teams",
        json={"alias": "nope"},
        headers={"authorization": f"Bearer {world.keys['viewer']}"},
    )
    assert response.status_code == 403
    assert "viewer" in response.json()["error"]["message"]
    assert counter._value.get() == before + 1


def test_every_admin_route_is_behind_the_role_check_and_audited(world: World) -> None:
    """Every `/admin` operation the gateway documents comes from the admin router, whose routes all carry
    the role check and the audit recording: a route added there later inherits both, and one added to the
    app some other way fails here."""
    built = {
        (method, route.path)
        for route in admin_router().routes
        if isinstance(route, AuditedRoute) and any(d.dependency is admit_admin for d in route.dependencies)
        for method in route.methods
    }
    schema = httpx.get(world.gateway.url + "/openapi.json").json()
    served = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/admin")
        for method in operations
    }
    assert len(served) >= 15
    assert served <= {(method, path.replace(":path}", "}")) for method, path in built}
