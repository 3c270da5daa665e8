"""A provider credential stored through the admin API is in no row, response, log line, metric or trace in
clear (nor as its base64 or hex); a key rotation re-encrypts every row so the old key is no longer
needed; a ciphertext copied into another row does not decrypt there."""

from __future__ import annotations

import base64
import io
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text

from ferryman.observability.logging import configure_logging
from ferryman.testing import FakeOpenAI
from tests.conftest import serve_gateway

MASTER = "credentials-at-rest-master"
HEADERS = {"authorization": f"Bearer {MASTER}"}
FREE = {"input_per_mtok": 0, "output_per_mtok": 0}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
        raw.hex().upper(),
    ]


def raw_rows(path: Path) -> str:
    """Every column of every runtime-model row, read with plain SQL, as one text."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            rows = [
                *conn.execute(text("SELECT * FROM runtime_models")),
                *conn.execute(text("SELECT * FROM runtime_deployments")),
            ]
    finally:
        engine.dispose()
    return "\n".join(repr(tuple(row)) for row in rows)


def sealed_tokens(path: Path) -> dict[str, str]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT model_name, api_key_sealed FROM runtime_deployments"))
            return {name: token for name, token in rows}
    finally:
        engine.dispose()


def execute(path: Path, statement: str, **params: Any) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def config(database: Path, key: str, previous: list[str] | None = None) -> dict[str, Any]:
    return {
        "master_key": MASTER,
        "database_url": f"sqlite+aiosqlite:///{database}",
        "encryption": {"key": key, "previous_keys": previous or []},
        "models": [{"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}],
    }


def model_body(name: str, fake: FakeOpenAI, credential: str) -> dict[str, Any]:
    deployment = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": credential,
        "price": FREE,
    }
    return {"name": name, "deployments": [deployment]}


def chat(url: str, model: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json={"model": model, **CHAT}, headers=HEADERS, timeout=10
    )


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    yield stream
    logging.getLogger("ferryman").handlers.clear()


def test_a_stored_credential_is_nowhere_in_clear(tmp_path: Path, log_stream: io.StringIO) -> None:
    credential = f"sk-distinctive-{uuid.uuid4().hex}"
    database = tmp_path / "ferryman.db"
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    answers: list[str] = []
    with (
        FakeOpenAI(api_key=credential) as fake,
        serve_gateway(config(database, new_key()), tracing) as gateway,
    ):
        with httpx.Client(base_url=gateway.url, headers=HEADERS, timeout=10) as admin:
            created = admin.post("/admin/models", json=model_body("secretive", fake, credential))
            assert created.status_code == 201, created.text
            answers.append(created.text)
            served = chat(gateway.url, "secretive")
            assert served.status_code == 200, served.text
            assert fake.requests[-1].headers["authorization"] == f"Bearer {credential}"  # it was used
            answers.append(served.text)
            for response in (
                admin.get("/admin/models"),
                admin.get("/admin/models/secretive"),
                admin.patch("/admin/models/secretive", json={"timeout_seconds": 60}),
                admin.post("/admin/models/secretive/test"),
                admin.get("/admin/deployments"),
                httpx.get(gateway.url + "/health", timeout=10),
            ):
                assert response.status_code == 200, response.text
                answers.append(response.text)
            metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
        time.sleep(0.2)  # the last spans end just after their last byte
    rows = raw_rows(database)
    assert "secretive" in rows and "v1." in rows  # the rows are there, sealed
    spans = "\n".join(span.to_json() for span in exporter.get_finished_spans())
    assert spans and metrics and log_stream.getvalue()
    places = {"rows": rows, "answers": "\n".join(answers), "logs": log_stream.getvalue(), "metrics": metrics}
    places["traces"] = spans
    for form in encodings(credential):
        found = [place for place, body in places.items() if form in body]
        assert not found, f"the credential (as {form[:8]}…) is in {found}"


def test_rotation_reencrypts_every_row_and_the_old_key_is_then_unneeded(tmp_path: Path) -> None:
    credential = f"sk-rotated-{uuid.uuid4().hex}"
    database = tmp_path / "ferryman.db"
    old_key, new = new_key(), new_key()
    with FakeOpenAI(api_key=credential) as fake:
        with serve_gateway(config(database, old_key)) as gateway:
            body = model_body("rotating", fake, credential)
            response = httpx.post(gateway.url + "/admin/models", json=body, headers=HEADERS)
            assert response.status_code == 201, response.text
        before = sealed_tokens(database)["rotating"]
        with serve_gateway(config(database, new, previous=[old_key])) as gateway:  # both keys: still served
            assert chat(gateway.url, "rotating").status_code == 200
            assert sealed_tokens(database)["rotating"] == before  # a replica never rewrites rows itself
            assert reencrypt(tmp_path, database, new, old_key) == 0
            after = sealed_tokens(database)["rotating"]
            assert after != before and after.split(".")[1] != before.split(".")[1]  # another key id
        with serve_gateway(config(database, new)) as gateway:  # the old key is gone entirely
            served = chat(gateway.url, "rotating")
            assert served.status_code == 200, served.text
            assert fake.requests[-1].headers["authorization"] == f"Bearer {credential}"
        with serve_gateway(config(database, old_key)) as gateway:  # and the old key alone opens nothing
            assert chat(gateway.url, "rotating").status_code == 404


def reencrypt(tmp_path: Path, database: Path, key: str, previous: str) -> int:
    """`ferryman models reencrypt`, with the keys in the environment as operators pass them."""
    from ferryman.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(f"database_url: sqlite+aiosqlite:///{database}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FERRYMAN_ENCRYPTION_KEY", key)
        patch.setenv("FERRYMAN_ENCRYPTION_KEY_PREVIOUS", previous)
        return main(["models", "reencrypt", "--config", str(path)])


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(tmp_path: Path) -> None:
    database = tmp_path / "ferryman.db"
    first, second = f"sk-first-{uuid.uuid4().hex}", f"sk-second-{uuid.uuid4().hex}"
    with (
        FakeOpenAI(api_key=first) as fake_first,
        FakeOpenAI(api_key=second) as fake_second,
        serve_gateway(config(database, new_key())) as gateway,
    ):
        for name, fake, credential in (("first", fake_first, first), ("second", fake_second, second)):
            body = model_body(name, fake, credential)
            assert httpx.post(gateway.url + "/admin/models", json=body, headers=HEADERS).status_code == 201
        assert chat(gateway.url, "second").status_code == 200
        # An attacker with write access to the table copies the first model's credential into the second.
        execute(
            database,
            "UPDATE runtime_deployments SET api_key_sealed = :token WHERE model_name = 'second'",
            token=sealed_tokens(database)["first"],
        )
        execute(database, "UPDATE runtime_catalog SET version = version + 1")
        deadline = time.monotonic() + 3
        while chat(gateway.url, "second").status_code != 404:  # refused, not served with `first`'s key
            assert time.monotonic() < deadline, "the moved ciphertext was accepted"
            time.sleep(0.05)
        assert chat(gateway.url, "first").status_code == 200
        assert all(r.headers["authorization"] != f"Bearer {first}" for r in fake_second.requests)
