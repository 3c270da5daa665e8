"""Logs: one JSON line per request, the request id on every line, no bodies, no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ferryman.observability.logging import JsonFormatter, configure_logging, log_request, scrub
from ferryman.testing import FakeOpenAI, Reply
from tests.conftest import RunningGateway

UPSTREAM_KEY = "sk-upstream-secret-abcdefghijkl"
MASTER = "fm-master-key-0123456789abcdef"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    yield stream
    logging.getLogger("ferryman").handlers.clear()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def gateway(gateway_factory: Any, fake: FakeOpenAI) -> RunningGateway:
    deployment = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": UPSTREAM_KEY,
    }
    return gateway_factory({"master_key": MASTER, "models": [{"name": "gpt", "deployments": [deployment]}]})  # type: ignore[no-any-return]


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def chat(gateway: RunningGateway, content: str, *, stream: bool = False, key: str = MASTER) -> httpx.Response:
    body = {"model": "gpt", "stream": stream, "messages": [{"role": "user", "content": content}]}
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in lines(stream) if line["logger"] == "ferryman.access"]


def test_one_json_line_per_request_with_every_field(gateway: RunningGateway, log_stream: io.StringIO) -> None:
    response = chat(gateway, "hello there")
    (line,) = access_lines(log_stream)
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["level"] == "info"
    assert line["model"] == "gpt"
    assert line["provider"] == "openai"
    assert line["deployment"] == "openai/gpt-4o-mini"
    assert line["key_alias"] == "master"
    assert line["team_id"] is None  # the master key belongs to no team
    assert line["status"] == "success"
    assert line["http_status"] == 200
    assert line["stream"] is False
    assert line["attempts"] == 1
    assert line["input_tokens"] == 2 and line["output_tokens"] == 3
    assert line["cost_usd"] == pytest.approx((2 * 0.15 + 3 * 0.60) / 1e6)
    assert line["latency_ms"] >= line["upstream_ms"] > 0
    assert line["ttft_ms"] is None


def test_streamed_request_logs_time_to_first_token(
    gateway: RunningGateway, log_stream: io.StringIO, fake: FakeOpenAI
) -> None:
    fake.script.reply(Reply.text("a b c", chunks=3, chunk_delay=0.05))
    assert chat(gateway, "x", stream=True).status_code == 200
    (line,) = access_lines(log_stream)
    assert line["stream"] is True
    assert 0 < line["ttft_ms"] <= line["latency_ms"]
    assert line["output_tokens"] == 3


def test_request_id_is_on_every_line_of_the_request(
    gateway: RunningGateway, log_stream: io.StringIO, fake: FakeOpenAI
) -> None:
    fake.script.reply(Reply.error(400, "nope"))
    response = chat(gateway, "x")
    assert response.status_code == 400
    request_lines = lines(log_stream)
    assert {line["logger"] for line in request_lines} >= {"ferryman.attempts", "ferryman.access"}
    assert {line["request_id"] for line in request_lines} == {response.headers["x-request-id"]}
    assert access_lines(log_stream)[0]["status"] == "error"


def test_bodies_are_never_logged(gateway: RunningGateway, log_stream: io.StringIO) -> None:
    chat(gateway, "my-very-private-prompt-text")
    chat(gateway, "my-very-private-prompt-text", stream=True)
    assert "my-very-private-prompt-text" not in log_stream.getvalue()
    assert "echo:" not in log_stream.getvalue()


def test_secrets_never_reach_the_logs(
    gateway: RunningGateway, log_stream: io.StringIO, fake: FakeOpenAI
) -> None:
    fake.script.reply(Reply.error(401, f"Incorrect API key provided: {UPSTREAM_KEY}"))
    refused = chat(gateway, "x")
    assert refused.status_code == 502  # the gateway's upstream key is at fault, not the client's
    assert UPSTREAM_KEY not in refused.text  # nor is the upstream key handed to the client
    chat(gateway, "x", key="fm-wrong-key-00000000000000")
    text = log_stream.getvalue()
    assert UPSTREAM_KEY not in text
    assert MASTER not in text
    assert "fm-wrong-key-00000000000000" not in text
    assert "[REDACTED]" in text


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnop",
        "sk-ant-api03-abcdefghijk",
        "fm-abcdefghijklmnopqrst",
        "AIzaSyA1234567890abcdefghijk",
        "Bearer abc.def.ghijklmnop",
    ],
)
def test_scrub_redacts_each_key_shape(secret: str) -> None:
    assert secret not in scrub(f"failed with {secret} today")


@pytest.mark.parametrize("stream", [False, True])
def test_bodies_are_logged_only_when_asked_and_still_scrubbed(
    gateway_factory: Any, fake: FakeOpenAI, log_stream: io.StringIO, stream: bool
) -> None:
    deployment = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": UPSTREAM_KEY,
    }
    gateway: RunningGateway = gateway_factory(
        {
            "master_key": MASTER,
            "logging": {"log_bodies": True},
            "models": [{"name": "gpt", "deployments": [deployment]}],
        }
    )
    chat(gateway, "please remember sk-leaked-secret-0123456789 for me", stream=stream)
    (line,) = access_lines(log_stream)
    assert "please remember" in line["request_body"]
    assert "echo: please remember" in line["response_body"]
    assert "sk-leaked-secret-0123456789" not in log_stream.getvalue()


def test_refused_requests_get_their_line_too(gateway: RunningGateway, log_stream: io.StringIO) -> None:
    refused = chat(gateway, "x", key="fm-not-a-real-key-00000000")
    bad = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=b"{",
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    unknown = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    lines_by_id = {line["request_id"]: line for line in access_lines(log_stream)}
    assert len(lines_by_id) == 3
    first = lines_by_id[refused.headers["x-request-id"]]
    assert (first["status"], first["http_status"], first["error"]) == ("error", 401, "AuthenticationError")
    assert first["key_alias"] == "anonymous"
    second = lines_by_id[bad.headers["x-request-id"]]
    assert (second["http_status"], second["error"], second["model"]) == (400, "InvalidRequestError", "")
    third = lines_by_id[unknown.headers["x-request-id"]]
    assert (third["http_status"], third["model"], third["key_alias"]) == (404, "nope", "master")


@pytest.mark.parametrize(
    "text",
    ["", "plain words", "task-abcdefghijkl", "Bearer short", "sk-", "bearer abcdefghijkl", "AIzaShort"],
)
def test_scrub_leaves_what_is_no_credential_alone(text: str) -> None:
    assert scrub(text) == text


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("ferryman.test").makeRecord(
        "ferryman.test", logging.INFO, __file__, 1, "hello %s", ("there",), None, extra=extra
    )
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    return record


def test_json_lines_keep_every_records_own_fields_in_order() -> None:
    formatter = JsonFormatter()
    first = _record(1_700_000_000.25, model="m", _private="x", key="sk-proj-abcdefghijklmnop")
    second = _record(1_700_000_000.999, b=1, a=None)
    second.added_by_a_filter = "yes"
    second.message = "set by another handler's formatter"  # a standard attribute: never a field
    for _ in range(2):  # the second time, each layout is already known
        one, two = json.loads(formatter.format(first)), json.loads(formatter.format(second))
        assert list(one) == ["ts", "level", "logger", "message", "model", "key"]
        assert (one["ts"], one["message"], one["key"]) == (
            "2023-11-14T22:13:20.250Z",
            "hello there",
            "[REDACTED]",
        )
        assert list(two) == ["ts", "level", "logger", "message", "b", "a", "added_by_a_filter"]
        assert two["ts"] == "2023-11-14T22:13:20.999Z"
    assert json.loads(formatter.format(_record(1_700_000_001.0)))["ts"] == "2023-11-14T22:13:21.000Z"


def test_the_access_line_goes_through_the_loggers_handlers(log_stream: io.StringIO) -> None:
    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    seen: list[logging.LogRecord] = []
    handler = Keep()
    logging.getLogger("ferryman.access").addHandler(handler)
    try:
        log_request({"model": "m", "status": "success"})
        with pytest.raises(KeyError, match="lineno"):  # as `Logger.info(extra=...)` refuses it
            log_request({"model": "m", "lineno": 3})
    finally:
        logging.getLogger("ferryman.access").removeHandler(handler)
    (record,) = seen
    assert (record.funcName, record.getMessage(), record.model) == ("log_request", "request", "m")  # type: ignore[attr-defined]
    (line,) = lines(log_stream)
    assert (line["logger"], line["message"], line["model"], line["status"]) == (
        "ferryman.access",
        "request",
        "m",
        "success",
    )
