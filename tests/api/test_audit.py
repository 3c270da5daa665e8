"""The admin audit log on SQLite and on a real PostgreSQL: every change and every refused attempt recorded
with its actor, action, target, outcome, client address and request id; never a secret or a body, in the
API or in the raw rows; filters and paging; a change refused (503) when its record cannot be written.

The gateway trusts 127.0.0.1 as a proxy: requests sent from there have their `X-Forwarded-For` believed,
those sent from 127.0.0.2 (another loopback address) do not. The record takes the address the gateway's
client-IP logic resolved (`api/client_ip.py`, tested on its own in test_client_ip.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from ferryman.store.audit import AuditLog, AuditUnavailableError
from ferryman.store.database import open_engine
from tests.conftest import RunningGateway, serve_gateway

MASTER = "audit-master-key-for-tests"
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
PROXY = "127.0.0.1"
ELSEWHERE = "127.0.0.2"
BODY_MARKER = "body-marker-never-recorded"


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[RunningGateway]:
    config = {
        "master_key": MASTER,
        "database_url": database_url,
        "models": [FAKE],
        "server": {"trusted_proxies": [f"{PROXY}/32"]},
    }
    with serve_gateway(config) as running:
        yield running


def client(gateway: RunningGateway, key: str | None, *, source: str = "127.0.0.1") -> httpx.Client:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=gateway.url, headers=headers, transport=transport, timeout=10)


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with client(gateway, MASTER) as master:
        yield master


def new_key(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/admin/keys", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def records(reader: httpx.Client, **filters: Any) -> list[dict[str, Any]]:
    response = reader.get("/admin/audit", params=filters)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def by_request(reader: httpx.Client, request_id: str) -> dict[str, Any]:
    """The one record of the request with this id (ids are unique per test)."""
    [record] = [r for r in records(reader, limit=1000) if r["request_id"] == request_id]
    return record


def rid() -> str:
    return f"audit-{uuid.uuid4().hex}"


def test_key_lifecycle_is_recorded_with_actor_action_target_and_outcome(admin: httpx.Client) -> None:
    ids = [rid() for _ in range(4)]
    created = admin.post(
        "/admin/keys",
        json={"alias": "lifecycle", "metadata": {"x": BODY_MARKER}},
        # acting for an end user changes nothing about who the actor is
        headers={"x-request-id": ids[0], "x-ferryman-end-user": "someone"},
    )
    assert created.status_code == 201
    key_id = created.json()["id"]
    steps = [
        ("PATCH", f"/admin/keys/{key_id}", {"rpm_limit": 5}, "PATCH /admin/keys/{key_id}", 200),
        ("POST", f"/admin/keys/{key_id}/rotate", None, "POST /admin/keys/{key_id}/rotate", 200),
        ("DELETE", f"/admin/keys/{key_id}", None, "DELETE /admin/keys/{key_id}", 200),
    ]
    for request_id, (method, path, body, _, status) in zip(ids[1:], steps, strict=True):
        response = admin.request(method, path, json=body, headers={"x-request-id": request_id})
        assert response.status_code == status, response.text
    expected = [("POST /admin/keys", {}, 201)] + [(action, {"key_id": key_id}, s) for *_, action, s in steps]
    for request_id, (action, target, status) in zip(ids, expected, strict=True):
        record = by_request(admin, request_id)
        assert (record["action"], record["target"], record["status"]) == (action, target, status)
        assert (record["actor_id"], record["actor_alias"], record["role"]) == ("master", "master", "admin")
        assert record["client_ip"] == "127.0.0.1"  # the trusted proxy itself, sending no X-Forwarded-For
        assert abs(datetime.fromisoformat(record["at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    newest = [r["request_id"] for r in records(admin, actor="master", limit=4)]
    assert newest == list(reversed(ids))  # newest first


def test_a_key_with_the_admin_role_is_named_by_id_and_alias(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    operator = new_key(admin, alias="operator-ana", role="admin")
    request_id = rid()
    with client(gateway, operator["key"]) as as_operator:
        made = as_operator.post(
            "/admin/teams", json={"alias": "by-ana"}, headers={"x-request-id": request_id}
        )
        assert made.status_code == 201
        record = by_request(as_operator, request_id)
    assert (record["actor_id"], record["actor_alias"], record["role"]) == (
        operator["id"],
        "operator-ana",
        "admin",
    )
    assert record["action"] == "POST /admin/teams"


def test_refused_attempts_are_recorded_with_their_status(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    viewer = new_key(admin, alias="a-viewer", role="viewer")
    plain = new_key(admin, alias="plain-key")
    victim = new_key(admin, alias="victim")["id"]
    attempts = [
        (viewer["key"], "POST", "/admin/teams", 403, (viewer["id"], "a-viewer", "viewer")),
        (plain["key"], "DELETE", f"/admin/keys/{victim}", 403, (plain["id"], "plain-key", None)),
        (None, "PATCH", f"/admin/keys/{victim}", 401, (None, None, None)),
        ("fm-not-a-key-at-all-but-long-enough", "DELETE", f"/admin/keys/{victim}", 401, (None, None, None)),
    ]
    for key, method, path, status, actor in attempts:
        request_id = rid()
        with client(gateway, key) as caller:
            response = caller.request(method, path, json={}, headers={"x-request-id": request_id})
        assert response.status_code == status
        record = by_request(admin, request_id)
        assert record["status"] == status
        assert (record["actor_id"], record["actor_alias"], record["role"]) == actor
    assert admin.get(f"/admin/keys/{victim}").json()["revoked"] is False  # refused means not done


def test_reads_are_not_recorded(admin: httpx.Client) -> None:
    request_id = rid()
    assert admin.get("/admin/keys", headers={"x-request-id": request_id}).status_code == 200
    assert not [r for r in records(admin, limit=1000) if r["request_id"] == request_id]


def test_forwarded_for_is_believed_only_from_the_trusted_proxy(gateway: RunningGateway) -> None:
    forged = {"x-forwarded-for": "198.51.100.9"}
    via_proxy, direct = rid(), rid()
    with client(gateway, MASTER, source=PROXY) as proxied:
        response = proxied.post("/admin/teams", json={}, headers={**forged, "x-request-id": via_proxy})
        assert response.status_code == 201
    with client(gateway, MASTER, source=ELSEWHERE) as master:
        response = master.post("/admin/teams", json={}, headers={**forged, "x-request-id": direct})
        assert response.status_code == 201
        assert by_request(master, via_proxy)["client_ip"] == "198.51.100.9"
        assert by_request(master, direct)["client_ip"] == ELSEWHERE


async def raw_rows(database_url: str) -> str:
    engine = open_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT * FROM admin_audit"))).all()
    finally:
        await engine.dispose()
    return json.dumps([[str(value) for value in row] for row in rows])


def test_no_secret_or_body_is_ever_recorded(
    admin: httpx.Client, gateway: RunningGateway, database_url: str
) -> None:
    created = new_key(admin, alias="secretive", role="admin", metadata={"note": BODY_MARKER})
    rotated = admin.post(f"/admin/keys/{created['id']}/rotate").json()["key"]
    with client(gateway, rotated) as as_key:
        assert as_key.post("/admin/teams", json={"alias": BODY_MARKER}).status_code == 201
    with client(gateway, "fm-" + "s" * 43) as wrong:  # a refused secret is not kept either
        assert wrong.post("/admin/teams", json={}).status_code == 401
    served = admin.get("/admin/audit", params={"limit": 1000}).text
    stored = asyncio.run(raw_rows(database_url))
    assert created["id"] in stored  # the rows are there...
    for secret in (created["key"], rotated, MASTER, "fm-" + "s" * 43, BODY_MARKER):
        assert secret not in served  # ...without a secret or a body
        assert secret not in stored


def test_filters_and_paging(admin: httpx.Client, gateway: RunningGateway) -> None:
    actor = new_key(admin, alias=f"pager-{uuid.uuid4().hex[:8]}", role="admin")
    before = datetime.now(UTC)
    with client(gateway, actor["key"]) as as_actor:
        for n in range(5):
            assert as_actor.post("/admin/teams", json={"alias": f"page-{n}"}).status_code == 201
        team = as_actor.get("/admin/teams").json()["data"][-1]["id"]
        assert as_actor.patch(f"/admin/teams/{team}", json={"blocked": True}).status_code == 200
    after = datetime.now(UTC)

    everything = records(admin, actor=actor["id"])
    assert len(everything) == 6
    assert [r["id"] for r in everything] == sorted((r["id"] for r in everything), reverse=True)
    assert records(admin, actor=actor["alias"]) == everything  # by alias as by id
    posts = records(admin, actor=actor["id"], action="POST /admin/teams")
    assert len(posts) == 5
    assert records(admin, actor=actor["id"], action="PATCH /admin/teams/{team_id}")[0]["target"] == {
        "team_id": team
    }
    assert records(admin, actor=actor["id"], since=after.isoformat()) == []
    assert records(admin, actor=actor["id"], until=before.isoformat()) == []
    assert len(records(admin, actor=actor["id"], since=before.isoformat(), until=after.isoformat())) == 6

    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"actor": actor["id"], "limit": 4}
        if cursor is not None:
            params["cursor"] = cursor
        page = admin.get("/admin/audit", params=params).json()
        pages.append([r["id"] for r in page["data"]])
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert [len(p) for p in pages] == [4, 2]
    assert [i for p in pages for i in p] == [r["id"] for r in everything]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 1001}, "limit"),
        ({"limit": 0}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "x"}, "cursor"),
    ],
)
def test_bad_filters_are_a_400_naming_the_parameter(
    admin: httpx.Client, params: dict[str, Any], param: str
) -> None:
    response = admin.get("/admin/audit", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_viewer_reads_the_audit_log_and_a_plain_key_cannot(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    viewer = new_key(admin, alias="auditor", role="viewer")["key"]
    plain = new_key(admin, alias="not-an-auditor")["key"]
    with client(gateway, viewer) as as_viewer:
        assert as_viewer.get("/admin/audit").json()["data"]
    with client(gateway, plain) as as_plain:
        refused = as_plain.get("/admin/audit")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_required"


def test_each_record_is_also_a_structured_log_line(
    admin: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = rid()
    with caplog.at_level(logging.INFO, logger="ferryman.audit"):
        assert admin.post("/admin/teams", json={}, headers={"x-request-id": request_id}).status_code == 201
    [line] = [r for r in caplog.records if r.name == "ferryman.audit"]
    assert line.getMessage() == "admin action"
    fields = line.__dict__
    assert (fields["action"], fields["status"], fields["actor_id"]) == ("POST /admin/teams", 201, "master")
    assert fields["audit_id"] == by_request(admin, request_id)["id"]


def test_a_change_whose_record_cannot_be_written_is_refused_and_not_made(
    admin: httpx.Client, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def rename(old: str, new: str) -> None:
        engine = open_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
        finally:
            await engine.dispose()

    alias = f"unrecorded-{uuid.uuid4().hex[:8]}"
    asyncio.run(rename("admin_audit", "admin_audit_away"))
    try:
        with caplog.at_level(logging.ERROR, logger="ferryman.audit"):
            response = admin.post("/admin/teams", json={"alias": alias})
        reads = admin.get("/admin/teams")
    finally:
        asyncio.run(rename("admin_audit_away", "admin_audit"))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "audit_unavailable"
    assert reads.status_code == 200  # reads do not need the audit log
    assert alias not in reads.text  # the change was not made
    assert any("change refused" in r.getMessage() for r in caplog.records)  # and the miss is logged


def test_an_outcome_that_cannot_be_written_leaves_the_record_without_status_and_logs_it(
    admin: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(self: AuditLog, seq: int, status: int) -> None:
        raise AuditUnavailableError("The audit log is unavailable (write).")

    monkeypatch.setattr(AuditLog, "finish", fail)
    request_id, alias = rid(), f"made-anyway-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.ERROR, logger="ferryman.audit"):
        response = admin.post("/admin/teams", json={"alias": alias}, headers={"x-request-id": request_id})
    monkeypatch.undo()
    assert response.status_code == 201  # the change had been recorded ahead, and was made
    assert alias in admin.get("/admin/teams").text
    record = by_request(admin, request_id)
    assert (record["action"], record["status"]) == ("POST /admin/teams", None)
    [line] = [r for r in caplog.records if "outcome not written" in r.getMessage()]
    assert (line.__dict__["status"], line.__dict__["audit_id"]) == (201, record["id"])


def test_a_database_too_slow_to_record_refuses_the_change_within_the_deadline(
    admin: httpx.Client, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a table lock that cancels cleanly needs PostgreSQL")
    monkeypatch.setattr("ferryman.store.audit.AUDIT_WRITE_TIMEOUT", 0.5)
    alias = f"too-slow-{uuid.uuid4().hex[:8]}"

    async def with_table_locked() -> tuple[httpx.Response, float]:
        engine = open_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("LOCK TABLE admin_audit IN EXCLUSIVE MODE"))
                started = time.monotonic()
                response = await asyncio.to_thread(admin.post, "/admin/teams", json={"alias": alias})
                return response, time.monotonic() - started
        finally:
            await engine.dispose()

    response, took = asyncio.run(with_table_locked())
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "audit_unavailable"
    assert took < 3
    assert alias not in admin.get("/admin/teams").text
