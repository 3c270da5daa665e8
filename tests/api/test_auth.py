"""The auth matrix on SQLite and a real PostgreSQL: one message for every bad key, 403 naming the model,
no database round trip for a cached key, and a key that never shows up in logs, errors or metrics."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from ferryman.observability.logging import configure_logging
from tests.conftest import RunningGateway, serve_gateway

MASTER = "auth-master-key-for-tests"
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
EMBED = {"name": "fake-embedding", "deployments": [{"provider": "fake", "model": "fake-embedding"}]}
OTHER = {"name": "other-model", "deployments": [{"provider": "fake", "model": "other-model"}]}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
BAD_KEY_MESSAGE = "The API key is invalid, expired or revoked."


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[RunningGateway]:
    config = {"master_key": MASTER, "database_url": database_url, "models": [FAKE, EMBED, OTHER]}
    with serve_gateway(config) as running:
        yield running


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
    ) as client:
        yield client


def new_key(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/admin/keys", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def chat(gateway: RunningGateway, key: str | None, model: str = "fake-model") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {**CHAT, "model": model}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def failures(gateway: RunningGateway, reason: str) -> float:
    value = gateway.metrics.registry.get_sample_value("ai_api_auth_failures_total", {"reason": reason})
    return value or 0.0


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["message"] == BAD_KEY_MESSAGE
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")


def test_no_key_is_401_and_counted(gateway: RunningGateway) -> None:
    before = failures(gateway, "missing")
    response = chat(gateway, None)
    assert response.status_code == 401
    assert "No API key" in response.json()["error"]["message"]
    assert failures(gateway, "missing") == before + 1


def test_unknown_key_is_401_and_counted(gateway: RunningGateway) -> None:
    before = failures(gateway, "invalid")
    assert_refused(chat(gateway, "fm-" + "x" * 43))
    assert_refused(chat(gateway, "not-even-our-format"))
    assert failures(gateway, "invalid") == before + 2


def test_valid_key_is_200(gateway: RunningGateway, admin: httpx.Client) -> None:
    assert chat(gateway, new_key(admin, alias="valid")["key"]).status_code == 200


def test_expired_key_gets_the_same_401(gateway: RunningGateway, admin: httpx.Client) -> None:
    expired = new_key(admin, expires_at=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
    before = failures(gateway, "expired")
    assert_refused(chat(gateway, expired["key"]))
    assert failures(gateway, "expired") == before + 1


def test_cached_key_expires_on_time(gateway: RunningGateway, admin: httpx.Client) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1)
    key = new_key(admin, expires_at=expires.isoformat())["key"]
    assert chat(gateway, key).status_code == 200  # now cached
    time.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    assert_refused(chat(gateway, key))


def test_revoked_and_blocked_keys_get_the_same_401(gateway: RunningGateway, admin: httpx.Client) -> None:
    revoked, blocked = new_key(admin), new_key(admin, blocked=True)
    admin.delete(f"/admin/keys/{revoked['id']}")
    assert_refused(chat(gateway, revoked["key"]))
    assert_refused(chat(gateway, blocked["key"]))


def test_wrong_model_is_403_naming_it(gateway: RunningGateway, admin: httpx.Client) -> None:
    key = new_key(admin, models=["other-*"])["key"]
    before = failures(gateway, "forbidden_model")
    response = chat(gateway, key, "fake-model")
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_allowed",
        "model",
        "permission_error",
    )
    assert "fake-model" in error["message"]
    assert failures(gateway, "forbidden_model") == before + 1
    assert chat(gateway, key, "other-model").status_code == 200


def test_model_rule_applies_in_every_ingress_format(gateway: RunningGateway, admin: httpx.Client) -> None:
    key = new_key(admin, models=["other-model"])["key"]
    anthropic = {"model": "fake-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    gemini = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    refused = [
        httpx.post(gateway.url + "/v1/messages", json=anthropic, headers={"x-api-key": key}),
        httpx.post(
            gateway.url + "/v1beta/models/fake-model:generateContent",
            json=gemini,
            headers={"x-goog-api-key": key},
        ),
        httpx.post(gateway.url + f"/v1beta/models/fake-model:generateContent?key={key}", json=gemini),
        httpx.post(
            gateway.url + "/v1/embeddings",
            json={"model": "fake-embedding", "input": "x"},
            headers={"authorization": f"Bearer {key}"},
        ),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    allowed = httpx.post(
        gateway.url + "/v1/messages", json={**anthropic, "model": "other-model"}, headers={"x-api-key": key}
    )
    assert allowed.status_code == 200, allowed.text


def test_model_list_shows_only_allowed_models(gateway: RunningGateway, admin: httpx.Client) -> None:
    key = new_key(admin, models=["fake-*"])["key"]
    listed = httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).json()
    assert sorted(m["id"] for m in listed["data"]) == ["fake-embedding", "fake-model"]


def test_team_and_key_rules_intersect(gateway: RunningGateway, admin: httpx.Client) -> None:
    team = admin.post("/admin/teams", json={"models": ["fake-model", "other-model"]}).json()
    key = new_key(admin, team_id=team["id"], models=["other-*", "fake-embedding"])["key"]
    assert chat(gateway, key, "other-model").status_code == 200
    assert chat(gateway, key, "fake-model").status_code == 403  # the key forbids it
    embed = httpx.post(
        gateway.url + "/v1/embeddings",
        json={"model": "fake-embedding", "input": "x"},
        headers={"authorization": f"Bearer {key}"},
    )
    assert embed.status_code == 403  # the team forbids it


def test_master_key_is_admin_and_a_client(gateway: RunningGateway) -> None:
    assert chat(gateway, MASTER).status_code == 200


def test_cached_key_costs_no_database_query(gateway: RunningGateway, admin: httpx.Client) -> None:
    key = new_key(admin, alias="counted")["key"]
    engine = gateway.state.keys.engine
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The spend ledger writes each request's cost, and the model catalog polls its version twice a
        # second (api/runtime_models.py): neither is auth's doing.
        if "spend_" not in statement and "runtime_catalog" not in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        assert chat(gateway, key).status_code == 200
        assert len(statements) == 1 and "api_keys" in statements[0]
        for _ in range(5):
            assert chat(gateway, key).status_code == 200
        assert len(statements) == 1
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


class RawRecords(logging.Handler):
    """Every record as logged, before any scrubbing: message, arguments and extra fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("httpx", "httpcore")):
            return  # the test's own HTTP client, which is not the gateway
        self.lines.append(f"{record.getMessage()} {record.__dict__!r}")


@pytest.fixture
def captured_logs() -> Iterator[tuple[io.StringIO, RawRecords]]:
    ferryman_logger, root = logging.getLogger("ferryman"), logging.getLogger()
    saved = (ferryman_logger.handlers[:], ferryman_logger.level, ferryman_logger.propagate, root.level)
    stream, raw = io.StringIO(), RawRecords()
    configure_logging("DEBUG", "json", stream=stream)
    ferryman_logger.addHandler(raw)
    root.addHandler(raw)
    root.setLevel(logging.DEBUG)
    try:
        yield stream, raw
    finally:
        root.removeHandler(raw)
        ferryman_logger.handlers[:], ferryman_logger.level, ferryman_logger.propagate, root.level = saved


def test_a_key_never_reaches_logs_errors_or_metrics(
    gateway: RunningGateway, admin: httpx.Client, captured_logs: tuple[io.StringIO, RawRecords]
) -> None:
    created = new_key(admin, alias="secretive", models=["fake-model"])
    secret = created["key"]
    bodies = [chat(gateway, secret).text, chat(gateway, secret, "other-model").text]
    rotated = admin.post(f"/admin/keys/{created['id']}/rotate").json()["key"]
    bodies += [chat(gateway, secret).text, chat(gateway, rotated).text]
    admin.delete(f"/admin/keys/{created['id']}")
    bodies += [chat(gateway, rotated).text, httpx.get(gateway.url + f"/v1/models?key={rotated}").text]
    bodies.append(httpx.get(gateway.url + "/metrics").text)
    stream, raw = captured_logs
    logs = stream.getvalue() + "\n".join(raw.lines)
    assert '"key_alias": "secretive"'.replace(" ", "") in logs.replace(" ", "")  # the use was logged
    for value in (secret, rotated):
        random_part = value.removeprefix("fm-")
        assert random_part not in logs
        assert all(random_part not in body for body in bodies)


def test_static_keys_from_config_without_a_database(gateway_factory: Any) -> None:
    hashed_secret = "plain-secret-only-its-hash-is-in-the-file"
    config = {
        "models": [FAKE, OTHER],
        "keys": [
            {"alias": "ci", "key": "fm-static-key-from-the-environment"},
            {
                "alias": "hashed",
                "key_hash": hashlib.sha256(hashed_secret.encode()).hexdigest(),
                "models": ["other-model"],
            },
            {"alias": "old", "key": "fm-static-expired-key", "expires_at": "2000-01-01T00:00:00Z"},
        ],
    }
    gateway = gateway_factory(config)
    assert chat(gateway, None).status_code == 401  # static keys alone turn auth on
    assert chat(gateway, "fm-static-key-from-the-environment").status_code == 200
    assert chat(gateway, hashed_secret, "other-model").status_code == 200
    assert chat(gateway, hashed_secret, "fake-model").status_code == 403
    assert_refused(chat(gateway, "fm-static-expired-key"))
    assert_refused(chat(gateway, "fm-unknown"))


def test_the_embedded_database_issues_keys_that_work_and_survive_a_restart(tmp_path: Any) -> None:
    config = {"master_key": MASTER, "data_dir": str(tmp_path / "data"), "models": [FAKE]}
    headers = {"authorization": f"Bearer {MASTER}"}
    with serve_gateway(config) as running:
        created = httpx.post(running.url + "/admin/keys", json={"alias": "embedded"}, headers=headers)
        assert created.status_code == 201, created.text
        secret = created.json()["key"]
        assert chat(running, secret).status_code == 200
        assert chat(running, "fm-not-a-key").status_code == 401
    assert (tmp_path / "data" / "ferryman.db").is_file()
    with serve_gateway(config) as restarted:
        assert chat(restarted, secret).status_code == 200
        listed = httpx.get(restarted.url + "/admin/keys", headers=headers).json()
        assert [key["alias"] for key in listed["data"]] == ["embedded"]


def test_the_embedded_default_without_a_master_key_is_open_and_its_admin_api_closed(tmp_path: Any) -> None:
    with serve_gateway({"data_dir": str(tmp_path), "models": [FAKE]}) as running:
        assert chat(running, None).status_code == 200
        response = httpx.post(running.url + "/admin/keys", json={}, headers={"authorization": "Bearer x"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_required"
