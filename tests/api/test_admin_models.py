"""Runtime models through the admin API, on SQLite and a real PostgreSQL: added, served to the official
`openai` SDK with the stored credential as the upstream's bearer token, changed, tested, deleted (then
a 404 in OpenAI's shape); config-file models listed read-only; bad bodies named by field."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from ferryman.testing import FakeOpenAI, Reply
from tests.conftest import RunningGateway, serve_gateway

MASTER = "admin-models-master-key"
ENCRYPTION_KEY = base64.b64encode(os.urandom(32)).decode()
FREE = {"input_per_mtok": 0, "output_per_mtok": 0}
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model", "price": FREE}]}
UPSTREAM_KEY = "sk-upstream-credential-7Qx9"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=UPSTREAM_KEY) as fake:  # refuses any other bearer token
        yield fake


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[RunningGateway]:
    config = {
        "master_key": MASTER,
        "database_url": database_url,
        "encryption": {"key": ENCRYPTION_KEY},
        "models": [FAKE],
    }
    with serve_gateway(config) as running:
        yield running


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def sdk(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client:
        yield client


def deployment(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": UPSTREAM_KEY,
        "price": FREE,
        **extra,
    }


def test_a_model_added_through_the_api_serves_with_its_stored_credential(
    admin: httpx.Client, sdk: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    created = admin.post(
        "/admin/models", json={"name": "runtime-chat", "deployments": [deployment(upstream)]}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["source"] == "runtime" and body["read_only"] is False and body["served"] is True
    assert body["deployments"][0]["api_key_hint"] == "…7Qx9"
    assert UPSTREAM_KEY not in created.text

    before = len(upstream.requests)
    answer = sdk.chat.completions.create(model="runtime-chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    sent = upstream.requests[before]
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the credential we stored
    assert "runtime-chat" in [m.id for m in sdk.models.list().data]
    admin.delete("/admin/models/runtime-chat")


def test_a_change_applies_and_keeps_the_credential_it_does_not_resend(
    admin: httpx.Client, sdk: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    created = admin.post(
        "/admin/models", json={"name": "team/changing", "deployments": [deployment(upstream, name="first")]}
    ).json()
    dep_id = created["deployments"][0]["id"]
    changed = admin.patch(
        "/admin/models/team/changing",  # a slash in the name: common for model names
        json={"deployments": [{"id": dep_id, "name": "renamed", "model": "gpt-4o"}], "timeout_seconds": 30},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["deployments"][0]["name"] == "renamed"
    assert changed.json()["deployments"][0]["api_key_hint"] == "…7Qx9"
    assert changed.json()["settings"]["timeout_seconds"] == 30

    before = len(upstream.requests)
    raw = sdk.chat.completions.with_raw_response.create(
        model="team/changing", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ferryman-deployment"] == "renamed"
    sent = upstream.requests[before]
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body["model"] == "gpt-4o"
    assert admin.get("/admin/models/team/changing").json()["deployments"][0]["model"] == "gpt-4o"
    admin.delete("/admin/models/team/changing")


def test_a_deleted_model_is_a_404_in_openai_shape(
    admin: httpx.Client, sdk: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    assert (
        admin.post(
            "/admin/models", json={"name": "doomed", "deployments": [deployment(upstream)]}
        ).status_code
        == 201
    )
    deleted = admin.delete("/admin/models/doomed")
    assert deleted.status_code == 200 and deleted.json() == {"name": "doomed", "deleted": True}
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="doomed", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert admin.get("/admin/models/doomed").status_code == 404
    assert admin.delete("/admin/models/doomed").status_code == 404


def test_config_models_are_listed_read_only(admin: httpx.Client, upstream: FakeOpenAI) -> None:
    listed = admin.get("/admin/models").json()["data"]
    fake = next(m for m in listed if m["name"] == "fake-model")
    assert fake["source"] == "config" and fake["read_only"] is True
    for response in (
        admin.patch("/admin/models/fake-model", json={"timeout_seconds": 5}),
        admin.delete("/admin/models/fake-model"),
        admin.post("/admin/models", json={"name": "fake-model", "deployments": [deployment(upstream)]}),
    ):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "model_read_only"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "deployments": [{"provider": "nope", "model": "m"}]}, "deployments.provider"),
        (
            {"name": "x", "deployments": [{"provider": "openai", "model": "m", "api_base": "ftp://h"}]},
            "deployments.api_base",
        ),
        ({"name": "bad\x00name", "deployments": [{"provider": "fake", "model": "m"}]}, "name"),
        ({"name": "x" * 201, "deployments": [{"provider": "fake", "model": "m"}]}, "name"),
        ({"name": "x", "deployments": []}, "deployments"),
        (
            {"name": "x", "deployments": [{"provider": "fake", "model": "m", "headers": {}}]},
            "deployments.headers",
        ),
        ({"name": "x", "deployments": [{"provider": "fake"}]}, "deployments[0].model"),
        (
            {"name": "x", "deployments": [{"provider": "fake", "model": "m"}], "fallbacks": ["ghost"]},
            "fallbacks[0]",
        ),
        ({"name": "x", "deployments": [{"provider": "openai-compatible", "model": "m"}]}, "deployments[0]"),
    ],
)
def test_bad_bodies_are_a_400_naming_the_field(admin: httpx.Client, body: dict[str, Any], param: str) -> None:
    response = admin.post("/admin/models", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert admin.get("/admin/models/x").status_code == 404  # nothing stored


def test_the_connection_test_reports_each_deployment(admin: httpx.Client, upstream: FakeOpenAI) -> None:
    with FakeOpenAI(api_key="sk-some-other-key") as refusing:
        body = {
            "name": "tested",
            "deployments": [deployment(upstream, name="good"), deployment(refusing, name="refused")],
        }
        assert admin.post("/admin/models", json=body).status_code == 201
        report = admin.post("/admin/models/tested/test")
        admin.delete("/admin/models/tested")
    assert report.status_code == 200, report.text
    results = {d["deployment"]: d for d in report.json()["deployments"]}
    assert report.json()["ok"] is False
    assert results["good"]["ok"] is True and results["good"]["latency_ms"] > 0
    assert results["refused"]["ok"] is False and results["refused"]["error"]
    assert UPSTREAM_KEY not in report.text
    assert admin.post("/admin/models/nobody/test").status_code == 404


def test_without_an_encryption_key_a_credential_is_refused(upstream: FakeOpenAI) -> None:
    with (
        serve_gateway({"master_key": MASTER, "models": [FAKE]}) as bare,
        httpx.Client(base_url=bare.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as client,
    ):
        refused = client.post("/admin/models", json={"name": "keyed", "deployments": [deployment(upstream)]})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "encryption_key_not_configured"
        assert refused.json()["error"]["param"] == "deployments[0].api_key"
        assert "FERRYMAN_ENCRYPTION_KEY" in refused.json()["error"]["message"]
        assert UPSTREAM_KEY not in refused.text
        keyless = {"provider": "fake", "model": "fake-model", "price": FREE}
        assert (
            client.post("/admin/models", json={"name": "keyless", "deployments": [keyless]}).status_code
            == 201
        )


def test_a_stream_in_flight_finishes_on_the_deployment_it_started_on(
    admin: httpx.Client, gateway: RunningGateway, upstream: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    with FakeOpenAI(api_key=UPSTREAM_KEY) as replacement:
        body = {"name": "moving", "deployments": [deployment(upstream, name="old")]}
        assert admin.post("/admin/models", json=body).status_code == 201
        upstream.script.reply(Reply.text("one two three four five six", chunks=6, chunk_delay=0.1))
        chat = {"model": "moving", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.Client(
            base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
        ) as client:
            with client.stream("POST", "/v1/chat/completions", json=chat) as stream:
                lines = stream.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                moved = admin.patch(
                    "/admin/models/moving", json={"deployments": [deployment(replacement, name="new")]}
                )
                assert moved.status_code == 200, moved.text
                rest = list(lines)
        assert stream.headers["x-ferryman-deployment"] == "old"
        text = "".join(
            json.loads(line[5:])["choices"][0]["delta"].get("content") or ""
            for line in [first, *rest]
            if line.startswith("data:") and line != "data: [DONE]" and json.loads(line[5:])["choices"]
        )
        assert text == "one two three four five six"  # the whole answer, from the old deployment
        assert "data: [DONE]" in rest
        answer = sdk.chat.completions.with_raw_response.create(
            model="moving", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.headers["x-ferryman-deployment"] == "new" and len(replacement.requests) == 1
        admin.delete("/admin/models/moving")
