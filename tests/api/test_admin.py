"""The admin API on SQLite and on a real PostgreSQL: keys and teams, master key only, bad bodies named,
values as large as the columns hold, and a Redis that refuses the revocation notice reported."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from ferryman.store.database import open_engine
from tests.conftest import RunningGateway, serve_gateway
from tests.processes import free_port
from tests.store.fixtures import throwaway_redis

MASTER = "admin-master-key-for-tests"
# Explicitly free: a budgeted key may only use priced models (an unpriced one could never be capped).
FREE = {"input_per_mtok": 0, "output_per_mtok": 0}
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model", "price": FREE}]}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
T = TypeVar("T")


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[RunningGateway]:
    with serve_gateway({"master_key": MASTER, "database_url": database_url, "models": [FAKE]}) as running:
        yield running


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
    ) as client:
        yield client


def chat(gateway: RunningGateway, key: str) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def create_key(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/admin/keys", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def assert_bad_request(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"]
    assert error["type"] == "invalid_request_error"


def test_create_key_returns_the_secret_once_and_echoes_every_field(admin: httpx.Client) -> None:
    body = {
        "alias": "billing-app",
        "models": ["fake-model", "gpt-*"],
        "expires_at": "2999-01-01T00:00:00Z",
        "metadata": {"owner": "ana", "tags": ["a", 1]},
        "rpm_limit": 60,
        "tpm_limit": 10000,
        "max_parallel": 4,
        "budget": {"daily_usd": 5.5, "monthly_usd": 100},
    }
    created = create_key(admin, **body)
    secret = created["key"]
    assert secret.startswith("fm-") and len(secret) == 46
    assert created["key_prefix"] == secret[:11]
    assert created["alias"] == "billing-app"
    assert created["models"] == ["fake-model", "gpt-*"]
    assert created["expires_at"].startswith("2999-01-01T00:00:00")
    assert created["metadata"] == {"owner": "ana", "tags": ["a", 1]}
    assert (created["rpm_limit"], created["tpm_limit"], created["max_parallel"]) == (60, 10000, 4)
    assert created["budget"] == {"daily_usd": 5.5, "monthly_usd": 100.0}
    assert created["revoked"] is False and created["last_used_at"] is None
    shown = admin.get(f"/admin/keys/{created['id']}").json()
    assert "key" not in shown and secret not in str(shown)
    assert shown["budget"] == created["budget"]


def test_keys_are_stored_as_sha256_only(admin: httpx.Client, database_url: str) -> None:
    created = create_key(admin, alias="hash-check")

    async def row() -> tuple[Any, ...]:
        engine = open_engine(database_url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(
                    text("SELECT * FROM api_keys WHERE id = :id"), {"id": created["id"]}
                )
                return tuple(result.one())
        finally:
            await engine.dispose()

    stored = asyncio.run(row())
    assert hashlib.sha256(created["key"].encode()).hexdigest() in stored
    assert not any(created["key"] in str(value) for value in stored)


def on_gateway_loop(gateway: RunningGateway, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` on the gateway's own event loop (its engine and pools belong to that loop)."""
    loop = gateway.server.servers[0].get_loop()
    return asyncio.run_coroutine_threadsafe(work, loop).result(timeout=10)


def stored_last_used(database_url: str, key_id: str) -> datetime | None:
    """`api_keys.last_used_at` of one key, read straight from the database."""

    async def read() -> Any:
        engine = open_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = text("SELECT last_used_at FROM api_keys WHERE id = :id")
                return (await conn.execute(query, {"id": key_id})).scalar_one()
        finally:
            await engine.dispose()

    value = asyncio.run(read())
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite keeps text


def test_last_used_at_is_set_after_use_once_the_recorder_flushes(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    used, idle = create_key(admin, alias="used"), create_key(admin, alias="idle")
    before = datetime.now(UTC)
    assert chat(gateway, used["key"]).status_code == 200
    on_gateway_loop(gateway, gateway.state.keys.flush_last_used())  # the batch the minute timer writes
    shown = admin.get(f"/admin/keys/{used['id']}").json()
    assert shown["last_used_at"] is not None
    last_used = datetime.fromisoformat(shown["last_used_at"])
    assert before - timedelta(seconds=1) <= last_used <= datetime.now(UTC) + timedelta(seconds=1)
    assert admin.get(f"/admin/keys/{idle['id']}").json()["last_used_at"] is None  # only keys used


def test_pending_last_used_writes_are_flushed_at_shutdown(admin: httpx.Client, database_url: str) -> None:
    created = create_key(admin, alias="used-then-shutdown")
    config = {"master_key": MASTER, "database_url": database_url, "models": [FAKE]}
    with serve_gateway(config) as replica:  # a replica that is about to stop, on the same database
        assert chat(replica, created["key"]).status_code == 200
        # Noted in memory only: its recorder's first batch is a minute away.
        assert stored_last_used(database_url, created["id"]) is None
    assert stored_last_used(database_url, created["id"]) is not None


def test_list_and_filter_keys(admin: httpx.Client) -> None:
    team = admin.post("/admin/teams", json={"alias": "listing"}).json()
    first = create_key(admin, alias="one", team_id=team["id"])
    second = create_key(admin, alias="two", team_id=team["id"])
    listed = admin.get("/admin/keys", params={"team_id": team["id"]}).json()["data"]
    assert [k["id"] for k in listed] == [first["id"], second["id"]]
    assert all("key" not in k for k in listed)


def test_patch_changes_only_the_fields_sent_and_null_clears(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    created = create_key(
        admin, alias="patch-me", models=["other"], rpm_limit=5, budget={"daily_usd": 1, "monthly_usd": 9}
    )
    assert chat(gateway, created["key"]).status_code == 403
    patched = admin.patch(f"/admin/keys/{created['id']}", json={"models": None, "budget": {"daily_usd": 2}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["models"] is None
    assert body["budget"] == {"daily_usd": 2.0, "monthly_usd": 9.0}
    assert body["alias"] == "patch-me" and body["rpm_limit"] == 5
    assert chat(gateway, created["key"]).status_code == 200  # the change applies at once on this replica


def test_block_and_unblock(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = create_key(admin, alias="blockable")
    assert chat(gateway, created["key"]).status_code == 200
    admin.patch(f"/admin/keys/{created['id']}", json={"blocked": True})
    assert chat(gateway, created["key"]).status_code == 401
    admin.patch(f"/admin/keys/{created['id']}", json={"blocked": False})
    assert chat(gateway, created["key"]).status_code == 200


def test_rotate_keeps_identity_and_kills_the_old_secret(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = create_key(admin, alias="rotating", rpm_limit=7)
    assert chat(gateway, created["key"]).status_code == 200
    rotated = admin.post(f"/admin/keys/{created['id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["id"] == created["id"] and new["rpm_limit"] == 7 and new["alias"] == "rotating"
    assert new["key"] != created["key"] and new["key"].startswith("fm-")
    assert chat(gateway, created["key"]).status_code == 401
    assert chat(gateway, new["key"]).status_code == 200


def test_revoke_refuses_the_key_and_keeps_the_record(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = create_key(admin, alias="revocable")
    assert chat(gateway, created["key"]).status_code == 200
    revoked = admin.delete(f"/admin/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert chat(gateway, created["key"]).status_code == 401
    assert admin.get(f"/admin/keys/{created['id']}").json()["revoked_at"] is not None
    assert created["id"] not in [k["id"] for k in admin.get("/admin/keys").json()["data"]]
    everything = admin.get("/admin/keys", params={"include_revoked": "true"}).json()["data"]
    assert created["id"] in [k["id"] for k in everything]
    assert admin.post(f"/admin/keys/{created['id']}/rotate").status_code == 404
    assert admin.patch(f"/admin/keys/{created['id']}", json={"alias": "x"}).status_code == 404


def test_team_crud_and_the_stricter_rule(admin: httpx.Client, gateway: RunningGateway) -> None:
    body = {"alias": "research", "models": ["fake-*"], "rpm_limit": 100, "budget": {"monthly_usd": 50}}
    created = admin.post("/admin/teams", json=body)
    assert created.status_code == 201, created.text
    team = created.json()
    assert (team["alias"], team["models"], team["rpm_limit"]) == ("research", ["fake-*"], 100)
    assert team["budget"] == {"daily_usd": None, "monthly_usd": 50.0}
    assert admin.get(f"/admin/teams/{team['id']}").json() == team
    assert team["id"] in [t["id"] for t in admin.get("/admin/teams").json()["data"]]
    key = create_key(admin, team_id=team["id"], models=["*"])
    assert chat(gateway, key["key"]).status_code == 200
    narrowed = admin.patch(f"/admin/teams/{team['id']}", json={"models": ["gpt-*"]})
    assert narrowed.status_code == 200 and narrowed.json()["rpm_limit"] == 100
    refused = chat(gateway, key["key"])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert admin.delete(f"/admin/teams/{team['id']}").status_code == 200
    assert admin.get(f"/admin/teams/{team['id']}").status_code == 404
    assert chat(gateway, key["key"]).status_code == 401


def test_blocked_team_blocks_its_keys(admin: httpx.Client, gateway: RunningGateway) -> None:
    team = admin.post("/admin/teams", json={"alias": "paused"}).json()
    key = create_key(admin, team_id=team["id"])
    assert chat(gateway, key["key"]).status_code == 200
    admin.patch(f"/admin/teams/{team['id']}", json={"blocked": True})
    assert chat(gateway, key["key"]).status_code == 401


def test_unknown_ids_are_404(admin: httpx.Client) -> None:
    for method, path in [
        ("GET", "/admin/keys/nope"),
        ("PATCH", "/admin/keys/nope"),
        ("POST", "/admin/keys/nope/rotate"),
        ("DELETE", "/admin/keys/nope"),
        ("GET", "/admin/teams/nope"),
        ("PATCH", "/admin/teams/nope"),
        ("DELETE", "/admin/teams/nope"),
    ]:
        response = admin.request(method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] in {"key_not_found", "team_not_found"}


def test_key_in_unknown_team_is_400_naming_team_id(admin: httpx.Client) -> None:
    assert_bad_request(admin.post("/admin/keys", json={"team_id": "missing"}), "team_id")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"rpm_limit": "many"}, "rpm_limit"),
        ({"budget": {"daily_usd": "lots"}}, "budget.daily_usd"),
        ({"budget": {"weekly_usd": 1}}, "budget.weekly_usd"),
        ({"models": []}, "models"),
        ({"models": "fake-model"}, "models"),
        ({"expires_at": "next tuesday"}, "expires_at"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_malformed_key_bodies_are_400_naming_the_field(
    admin: httpx.Client, body: dict[str, Any], param: str
) -> None:
    assert_bad_request(admin.post("/admin/keys", json=body), param)


TRILLION = 10**12  # tokens per minute: past PostgreSQL's INTEGER, which answered 500 for it


def test_limits_past_32_bits_are_stored_and_enforced_as_given(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    team = admin.post("/admin/teams", json={"alias": "big", "tpm_limit": TRILLION, "rpm_limit": TRILLION})
    assert team.status_code == 201, team.text
    assert (team.json()["tpm_limit"], team.json()["rpm_limit"]) == (TRILLION, TRILLION)
    created = create_key(
        admin, team_id=team.json()["id"], tpm_limit=TRILLION, budget={"monthly_usd": 999_999_999_999.5}
    )
    assert created["tpm_limit"] == TRILLION
    patched = admin.patch(
        f"/admin/keys/{created['id']}", json={"tpm_limit": 2**63 - 1, "rpm_limit": TRILLION}
    )
    assert patched.status_code == 200, patched.text
    shown = admin.get(f"/admin/keys/{created['id']}").json()
    assert (shown["tpm_limit"], shown["rpm_limit"]) == (2**63 - 1, TRILLION)
    assert shown["budget"]["monthly_usd"] == 999_999_999_999.5
    team_patch = admin.patch(f"/admin/teams/{team.json()['id']}", json={"tpm_limit": 2 * TRILLION})
    assert team_patch.status_code == 200 and team_patch.json()["tpm_limit"] == 2 * TRILLION
    assert chat(gateway, created["key"]).status_code == 200  # the grant loads from those columns


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tpm_limit": 2**63}, "tpm_limit"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"tpm_limit": 1.5}, "tpm_limit"),
        ({"max_parallel": 2**31}, "max_parallel"),
        ({"budget": {"daily_usd": -0.01}}, "budget.daily_usd"),
        ({"budget": {"monthly_usd": 1e12}}, "budget.monthly_usd"),
        ({"alias": "a" * 201}, "alias"),
        ({"alias": "nul\u0000inside"}, "alias"),
        ({"models": ["m"] * 1001}, "models"),
        ({"models": ["m" * 201]}, "models"),
        ({"models": ["tab\tinside"]}, "models"),
        ({"team_id": "t" * 33}, "team_id"),
        ({"metadata": {"blob": "x" * 20_000}}, "metadata"),
        ({"metadata": {"deep": json.loads("[" * 20 + "]" * 20)}}, "metadata"),
        ({"expires_at": "9999-12-31T23:00:00-05:00"}, "expires_at"),  # past year 9999 in UTC
    ],
)
def test_out_of_range_values_are_400_naming_the_field(
    admin: httpx.Client, body: dict[str, Any], param: str
) -> None:
    assert_bad_request(admin.post("/admin/keys", json=body), param)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"budget": {"daily_usd": NaN}}', "budget.daily_usd"),
        ('{"budget": {"monthly_usd": Infinity}}', "budget.monthly_usd"),
        ('{"tpm_limit": NaN}', "tpm_limit"),
        ('{"metadata": {"score": NaN}}', "metadata"),
        ('{"metadata": {"score": -Infinity}}', "metadata"),
        ('{"metadata": {"count": 1' + "0" * 30 + "}}", "metadata"),  # past 64 bits
    ],
)
def test_non_finite_numbers_are_400_naming_the_field(admin: httpx.Client, raw: str, param: str) -> None:
    """Python's JSON parser (FastAPI's) accepts `NaN` and `Infinity`; no column or JSON document can."""
    response = admin.post("/admin/keys", content=raw, headers={"content-type": "application/json"})
    assert_bad_request(response, param)


def test_out_of_range_team_values_and_ids_are_400(admin: httpx.Client) -> None:
    team = admin.post("/admin/teams", json={"alias": "bounded"}).json()
    assert_bad_request(admin.patch(f"/admin/teams/{team['id']}", json={"rpm_limit": 2**63}), "rpm_limit")
    assert_bad_request(admin.get("/admin/keys/" + "k" * 33), "key_id")
    assert_bad_request(admin.delete("/admin/teams/" + "t" * 33), "team_id")
    assert_bad_request(admin.get("/admin/keys", params={"team_id": "t" * 33}), "team_id")


def test_malformed_team_patch_is_400(admin: httpx.Client) -> None:
    team = admin.post("/admin/teams", json={"alias": "strict"}).json()
    assert_bad_request(admin.patch(f"/admin/teams/{team['id']}", json={"max_parallel": 0}), "max_parallel")


def test_invalid_json_body_is_400_not_500(admin: httpx.Client) -> None:
    response = admin.post("/admin/keys", content=b'{"alias": ', headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_admin_needs_the_master_key(admin: httpx.Client, gateway: RunningGateway) -> None:
    client_key = create_key(admin, alias="not-an-admin")["key"]
    forbidden = httpx.get(gateway.url + "/admin/keys", headers={"authorization": f"Bearer {client_key}"})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "admin_required"
    assert httpx.get(gateway.url + "/admin/keys").status_code == 401
    assert (
        httpx.get(gateway.url + "/admin/teams", headers={"authorization": "Bearer fm-wrong"}).status_code
        == 401
    )
    create = httpx.post(gateway.url + "/admin/keys", json={}, headers={"x-api-key": client_key})
    assert create.status_code == 403


def test_openapi_documents_the_admin_api(gateway: RunningGateway) -> None:
    schema = httpx.get(gateway.url + "/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/admin/keys"]) == {"get", "post"}
    assert set(paths["/admin/keys/{key_id}"]) == {"get", "patch", "delete"}
    assert "post" in paths["/admin/keys/{key_id}/rotate"]
    assert set(paths["/admin/teams/{team_id}"]) == {"get", "patch", "delete"}
    key_body = schema["components"]["schemas"]["KeyBody"]["properties"]
    assert {
        "alias",
        "team_id",
        "models",
        "expires_at",
        "metadata",
        "rpm_limit",
        "tpm_limit",
        "max_parallel",
        "budget",
    } <= set(key_body)
    assert "key" in schema["components"]["schemas"]["KeyCreated"]["properties"]


def metric(gateway: RunningGateway, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    assert len(samples) == 1, samples
    return float(samples[0].value)


def test_a_revocation_redis_cannot_announce_is_a_503_and_shows_in_health_and_metrics(
    database_url: str,
) -> None:
    """The change stands (it is committed), but the operator learns that other replicas may still honour
    the old key, and `/health` and `ai_api_invalidation_failures_total` say so until Redis takes a notice."""
    port = free_port()
    with ExitStack() as redis:
        url = redis.enter_context(throwaway_redis(port))
        config = {
            "master_key": MASTER,
            "database_url": database_url,
            "redis_url": url,
            "health": {"check_interval_seconds": 3600},  # so only admin calls publish in this test
            "models": [FAKE],
        }
        with (
            serve_gateway(config) as gateway,
            httpx.Client(
                base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
            ) as admin,
        ):
            revoked, rotated = create_key(admin, alias="to-revoke"), create_key(admin, alias="to-rotate")
            assert chat(gateway, revoked["key"]).status_code == 200
            assert metric(gateway, "ai_api_invalidation_failures_total") == 0
            assert httpx.get(gateway.url + "/health").json()["invalidation"]["degraded"] is False

            redis.close()  # Redis goes away
            response = admin.delete(f"/admin/keys/{revoked['id']}")
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["error"]["code"] == "invalidation_not_delivered"
            assert "saved" in body["error"]["message"]
            assert "key_cache_ttl_seconds" in body["error"]["message"]
            assert body["saved"]["id"] == revoked["id"] and body["saved"]["revoked"] is True
            assert admin.get(f"/admin/keys/{revoked['id']}").json()["revoked"] is True  # committed
            assert chat(gateway, revoked["key"]).status_code == 401  # and refused here at once

            new = admin.post(f"/admin/keys/{rotated['id']}/rotate")
            assert new.status_code == 503
            secret = new.json()["saved"]["key"]  # the only copy of the new secret is not lost
            assert secret != rotated["key"] and chat(gateway, secret).status_code == 200

            assert metric(gateway, "ai_api_invalidation_failures_total") == 2
            health = httpx.get(gateway.url + "/health").json()
            assert health["status"] == "degraded"
            assert health["invalidation"]["backend"] == "redis"
            assert health["invalidation"]["degraded"] is True
            assert health["invalidation"]["last_error"] == "ConnectionError"
            assert (
                health["invalidation"]["key_cache_ttl_seconds"] == 30
            )  # the default: the longest a miss lasts
            failed_at = datetime.fromisoformat(health["invalidation"]["last_failure_at"])
            assert datetime.now(UTC) - failed_at < timedelta(seconds=30)

            redis.enter_context(throwaway_redis(port))  # Redis is back
            patched = admin.patch(f"/admin/keys/{rotated['id']}", json={"alias": "rotated"})
            assert patched.status_code == 200, patched.text
            health = httpx.get(gateway.url + "/health").json()
            assert health["invalidation"]["degraded"] is False
            assert health["invalidation"]["last_failure_at"] is not None
            assert metric(gateway, "ai_api_invalidation_failures_total") == 2


def test_end_user_budgets_of_keys_set_patch_show_and_clear(admin: httpx.Client) -> None:
    created = create_key(
        admin,
        alias="consumer-app",
        end_user_budget={"daily_usd": 0.5, "monthly_usd": 5},
        end_user_budgets={"vip": {"daily_usd": 50}, "internal": {}},
    )
    assert created["end_user_budget"] == {"daily_usd": 0.5, "monthly_usd": 5.0}
    assert created["end_user_budgets"] == {
        "vip": {"daily_usd": 50.0, "monthly_usd": None},
        "internal": {"daily_usd": None, "monthly_usd": None},
    }
    assert created["budget"] == {"daily_usd": None, "monthly_usd": None}  # the key's own is separate
    url = f"/admin/keys/{created['id']}"
    assert admin.get(url).json()["end_user_budgets"] == created["end_user_budgets"]  # stored, read back
    patched = admin.patch(
        url, json={"end_user_budget": {"daily_usd": 1}, "end_user_budgets": {"vip": {"monthly_usd": 9}}}
    ).json()
    assert patched["end_user_budget"] == {"daily_usd": 1.0, "monthly_usd": 5.0}  # only the window sent
    assert patched["end_user_budgets"] == {"vip": {"daily_usd": None, "monthly_usd": 9.0}}  # replaced
    cleared = admin.patch(url, json={"end_user_budget": None, "end_user_budgets": None}).json()
    assert cleared["end_user_budget"] == {"daily_usd": None, "monthly_usd": None}
    assert cleared["end_user_budgets"] == {}
    assert admin.get(url).json() == cleared


def test_end_user_budget_of_teams_set_patch_show_and_clear(admin: httpx.Client) -> None:
    created = admin.post("/admin/teams", json={"end_user_budget": {"monthly_usd": 3}})
    assert created.status_code == 201, created.text
    team = created.json()
    assert team["end_user_budget"] == {"daily_usd": None, "monthly_usd": 3.0}
    assert "end_user_budgets" not in team  # explicit ones are the key's: end-user ids are per application
    url = f"/admin/teams/{team['id']}"
    assert admin.patch(url, json={"end_user_budget": {"daily_usd": 0.25}}).json()["end_user_budget"] == {
        "daily_usd": 0.25,
        "monthly_usd": 3.0,
    }
    assert admin.patch(url, json={"end_user_budget": None}).json()["end_user_budget"] == {
        "daily_usd": None,
        "monthly_usd": None,
    }
    assert admin.get(url).json()["end_user_budget"] == {"daily_usd": None, "monthly_usd": None}
    refused = admin.post("/admin/teams", json={"end_user_budgets": {"vip": {}}})
    assert_bad_request(refused, "end_user_budgets")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"end_user_budget": {"daily_usd": -1}}', "end_user_budget.daily_usd"),
        ('{"end_user_budget": {"monthly_usd": NaN}}', "end_user_budget.monthly_usd"),
        ('{"end_user_budget": {"daily_usd": Infinity}}', "end_user_budget.daily_usd"),
        ('{"end_user_budget": {"daily_usd": 1e12}}', "end_user_budget.daily_usd"),
        ('{"end_user_budget": {"weekly_usd": 1}}', "end_user_budget.weekly_usd"),
        ('{"end_user_budget": 5}', "end_user_budget"),
        ('{"end_user_budgets": {"vip": {"daily_usd": -0.5}}}', "end_user_budgets.vip.daily_usd"),
        ('{"end_user_budgets": {"vip": {"monthly_usd": "lots"}}}', "end_user_budgets.vip.monthly_usd"),
        ('{"end_user_budgets": {"vip": 3}}', "end_user_budgets.vip"),
        ('{"end_user_budgets": [1]}', "end_user_budgets"),
    ],
)
def test_malformed_end_user_budgets_are_400_naming_the_field(
    admin: httpx.Client, body: str, param: str
) -> None:
    headers = {"content-type": "application/json"}
    assert_bad_request(admin.post("/admin/keys", content=body, headers=headers), param)
    key = create_key(admin)
    assert_bad_request(admin.patch(f"/admin/keys/{key['id']}", content=body, headers=headers), param)


def test_end_user_budgets_with_a_bad_id_or_too_many_are_400(admin: httpx.Client) -> None:
    assert admin.post("/admin/keys", json={"end_user_budgets": {"": {}}}).status_code == 400
    assert admin.post("/admin/keys", json={"end_user_budgets": {"a\nb": {}}}).status_code == 400
    too_many: dict[str, dict[str, float]] = {f"user-{n}": {} for n in range(1001)}
    assert_bad_request(admin.post("/admin/keys", json={"end_user_budgets": too_many}), "end_user_budgets")
