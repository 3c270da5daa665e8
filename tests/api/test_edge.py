"""The HTTP edge: bad input gets a clear OpenAI-shaped error with the right status, never a traceback."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import anthropic
import httpx
import pytest
from starlette.requests import Request

from ferryman.api import health
from ferryman.settings import ServerSettings
from ferryman.store.service import KeyService
from tests.conftest import RunningGateway
from tests.processes import free_port

FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}


@pytest.fixture
def gateway(gateway_factory: Any) -> RunningGateway:
    refused = {
        "name": "refused",
        "deployments": [
            {"provider": "openai", "model": "gpt-4o-mini", "api_base": f"http://127.0.0.1:{free_port()}/v1"}
        ],
    }
    return gateway_factory({"models": [FAKE, refused], "server": {"max_body_bytes": 2048}})


def post(gateway: RunningGateway, path: str, content: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(gateway.url + path, content=content, headers=headers, timeout=10)


def assert_error(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return dict(error)


def test_malformed_json_is_400(gateway: RunningGateway) -> None:
    assert_error(post(gateway, "/v1/chat/completions", b'{"model": '), 400)


def test_non_object_json_is_400(gateway: RunningGateway) -> None:
    assert_error(post(gateway, "/v1/chat/completions", b"[1, 2]"), 400)


def test_empty_body_is_400(gateway: RunningGateway) -> None:
    assert_error(post(gateway, "/v1/chat/completions", b""), 400)


def test_missing_field_names_it(gateway: RunningGateway) -> None:
    assert_error(post(gateway, "/v1/chat/completions", b'{"model": "fake-model"}'), 400, param="messages")


def test_wrong_typed_field_names_it(gateway: RunningGateway) -> None:
    body = b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}'
    assert_error(post(gateway, "/v1/chat/completions", body), 400, param="temperature")


def test_unknown_model_is_404_model_not_found(gateway: RunningGateway) -> None:
    body = b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}'
    error = assert_error(post(gateway, "/v1/chat/completions", body), 404, code="model_not_found")
    assert "nope" in error["message"]


def test_unknown_model_in_each_format_is_404(gateway: RunningGateway) -> None:
    anthropic = b'{"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}'
    assert_error(post(gateway, "/v1/messages", anthropic), 404, code="model_not_found")
    gemini = b'{"contents": [{"role": "user", "parts": [{"text": "x"}]}]}'
    response = post(gateway, "/v1beta/models/nope:generateContent", gemini)
    assert response.status_code == 404
    error = response.json()["error"]  # Google's own shape, as the google-genai SDK parses it
    assert (error["code"], error["status"]) == (404, "NOT_FOUND")
    assert "nope" in error["message"]
    assert error["details"][0]["reason"] == "model_not_found"


def test_body_over_the_cap_is_413(gateway: RunningGateway) -> None:
    body = '{"model": "fake-model", "messages": [{"role": "user", "content": "' + "x" * 4096 + '"}]}'
    assert_error(post(gateway, "/v1/chat/completions", body), 413)


def test_body_over_the_cap_without_content_length_is_413(gateway: RunningGateway) -> None:
    def chunks() -> Any:
        yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}]}'

    response = httpx.post(gateway.url + "/v1/chat/completions", content=chunks(), timeout=10)
    assert_error(response, 413)


def test_default_body_cap_is_10_mib_and_inclusive(gateway_factory: Any) -> None:
    cap = 10 * 1024 * 1024
    assert ServerSettings().max_body_bytes == cap
    default = gateway_factory({"models": [FAKE]})  # no `server` section: the default cap applies
    message = b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}'
    at_cap = message + b" " * (cap - len(message))  # JSON allows trailing whitespace
    assert post(default, "/v1/chat/completions", at_cap).status_code == 200
    assert_error(post(default, "/v1/chat/completions", at_cap + b" "), 413)

    def streamed_without_length() -> Iterator[bytes]:
        yield at_cap
        yield b" "

    response = httpx.post(default.url + "/v1/chat/completions", content=streamed_without_length(), timeout=10)
    assert_error(response, 413)


def test_upstream_connection_refused_is_502(gateway: RunningGateway) -> None:
    body = b'{"model": "refused", "messages": [{"role": "user", "content": "x"}]}'
    assert_error(post(gateway, "/v1/chat/completions", body), 502, code="upstream_unreachable")
    stream = b'{"model": "refused", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    assert_error(post(gateway, "/v1/chat/completions", stream), 502, code="upstream_unreachable")


def test_unknown_route_is_404_in_our_shape(gateway: RunningGateway) -> None:
    assert_error(httpx.get(gateway.url + "/v2/nothing", timeout=10), 404, code="route_not_found")


def test_wrong_method_is_405_in_our_shape(gateway: RunningGateway) -> None:
    assert_error(httpx.get(gateway.url + "/v1/chat/completions", timeout=10), 405)


def test_every_response_carries_a_request_id(gateway: RunningGateway) -> None:
    ok = post(
        gateway,
        "/v1/chat/completions",
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}',
    )
    bad = post(gateway, "/v1/chat/completions", b"{")
    assert ok.headers["x-request-id"].startswith("req_")
    assert bad.headers["x-request-id"].startswith("req_")
    assert ok.headers["x-request-id"] != bad.headers["x-request-id"]


def test_a_sane_client_request_id_is_kept(gateway: RunningGateway) -> None:
    response = post(gateway, "/v1/chat/completions", b"{", **{"x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    weird = post(gateway, "/v1/chat/completions", b"{", **{"x-request-id": "a b\tc"})
    assert weird.headers["x-request-id"].startswith("req_")


def test_models_lists_configured_names(gateway: RunningGateway) -> None:
    body = httpx.get(gateway.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in body["data"]] == ["fake-model", "refused"]


def test_embeddings_through_the_fake_provider(gateway: RunningGateway, gateway_factory: Any) -> None:
    response = post(gateway, "/v1/embeddings", b'{"model": "fake-model", "input": ["a", "b"]}')
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert len(data[0]["embedding"]) == 8
    assert data[0]["embedding"] != data[1]["embedding"]


class TestUnexpectedErrors:
    """A bug on any route answers a generic 500 and leaves the keep-alive connection usable.

    Starlette's last-resort layer re-raises after sending its 500, and uvicorn then drops the connection
    without `Connection: close`; the client's next request on it failed with a reset.
    """

    MASTER = "sk-master-123456789"

    @staticmethod
    def two_requests(gateway: RunningGateway, first: str, headers: dict[str, str]) -> list[tuple[int, Any]]:
        """`GET first`, then `GET /health/ready`, on one HTTP/1.1 connection."""
        connection = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=10)
        try:
            answers = []
            for path in (first, "/health/ready"):
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                answers.append((response.status, response.getheader("connection"), response.read()))
            return [
                (status, (connection_header, json.loads(body))) for status, connection_header, body in answers
            ]
        finally:
            connection.close()

    @staticmethod
    def assert_internal_error(status: int, answer: Any) -> None:
        connection_header, body = answer
        assert status == 500
        assert connection_header is None  # a keep-alive connection, not one quietly doomed
        assert body["error"]["type"] == "api_error"
        assert "request id req_" in body["error"]["message"]
        assert "boom" not in json.dumps(body)  # the exception's text stays in the log

    @staticmethod
    def unhandled_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "unhandled error" and r.exc_info]

    def test_a_failing_hot_path_route_keeps_the_connection(
        self, gateway_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def boom(request: Request) -> NoReturn:
            raise RuntimeError("boom")

        monkeypatch.setattr(health, "live", boom)  # before the app is built, so its route is this
        gateway = gateway_factory({"models": [FAKE]})
        (status, answer), (after, _) = self.two_requests(gateway, "/health/live", {})
        self.assert_internal_error(status, answer)
        assert after == 200
        [record] = self.unhandled_logs(caplog)  # logged once, with its traceback
        assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)

    def test_a_failing_admin_route_keeps_the_connection(
        self, gateway_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The admin API is a mounted FastAPI app, with a last-resort layer of its own that re-raises too."""

        def boom(self: KeyService) -> NoReturn:
            raise RuntimeError("boom")

        monkeypatch.setattr(KeyService, "repository", property(boom))
        gateway = gateway_factory({"master_key": self.MASTER, "models": [FAKE]})
        headers = {"authorization": f"Bearer {self.MASTER}"}
        (status, answer), (after, _) = self.two_requests(gateway, "/admin/teams", headers)
        self.assert_internal_error(status, answer)
        assert after == 200
        assert len(self.unhandled_logs(caplog)) == 1


class TestAuth:
    """With a master key set, every inference route requires it, in any header an SDK uses."""

    @pytest.fixture
    def secured(self, gateway_factory: Any) -> RunningGateway:
        return gateway_factory({"master_key": "sk-master-123456789", "models": [FAKE]})

    BODY = b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}'

    def test_no_key_is_401(self, secured: RunningGateway) -> None:
        assert_error(post(secured, "/v1/chat/completions", self.BODY), 401, code="invalid_api_key")

    def test_wrong_key_is_401(self, secured: RunningGateway) -> None:
        response = post(secured, "/v1/chat/completions", self.BODY, authorization="Bearer sk-wrong-000000000")
        error = assert_error(response, 401)
        assert "sk-wrong" not in error["message"]

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("authorization", "Bearer sk-master-123456789"),
            ("x-api-key", "sk-master-123456789"),
            ("x-goog-api-key", "sk-master-123456789"),
        ],
    )
    def test_key_accepted_in_each_sdk_header(self, secured: RunningGateway, header: str, value: str) -> None:
        assert post(secured, "/v1/chat/completions", self.BODY, **{header: value}).status_code == 200

    def test_key_accepted_as_query_parameter(self, secured: RunningGateway) -> None:
        gemini = b'{"contents": [{"role": "user", "parts": [{"text": "x"}]}]}'
        url = "/v1beta/models/fake-model:generateContent?key=sk-master-123456789"
        assert post(secured, url, gemini).status_code == 200

    MESSAGES = b'{"model": "fake-model", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}'

    @pytest.mark.parametrize("header", ["authorization", "x-api-key"])
    def test_anthropic_messages_take_either_key_header_and_any_version(
        self, secured: RunningGateway, header: str
    ) -> None:
        def credential(key: str) -> dict[str, str]:
            return {header: f"Bearer {key}" if header == "authorization" else key}

        for version in ("2023-06-01", "2099-12-31", "not-a-date", None):
            headers = credential("sk-master-123456789")
            if version is not None:
                headers["anthropic-version"] = version
            response = post(secured, "/v1/messages", self.MESSAGES, **headers)
            assert response.status_code == 200, (version, response.text)
            assert response.json()["type"] == "message"
        wrong = credential("sk-wrong-000000000")
        assert_error(post(secured, "/v1/messages", self.MESSAGES, **wrong), 401, code="invalid_api_key")

    def test_anthropic_sdk_with_a_bearer_token(
        self, secured: RunningGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # else the SDK sends x-api-key too
        with anthropic.Anthropic(
            base_url=secured.url, auth_token="sk-master-123456789", max_retries=0
        ) as client:
            message = client.messages.create(
                model="fake-model", max_tokens=16, messages=[{"role": "user", "content": "Hello"}]
            )
        assert message.content[0].type == "text" and "Hello" in message.content[0].text

    def test_auth_failures_are_counted(self, secured: RunningGateway) -> None:
        post(secured, "/v1/chat/completions", self.BODY)
        post(secured, "/v1/chat/completions", self.BODY, authorization="Bearer nope-nope-nope")
        metrics = httpx.get(secured.url + "/metrics", timeout=10).text
        assert 'ai_api_auth_failures_total{reason="missing"} 1.0' in metrics
        assert 'ai_api_auth_failures_total{reason="invalid"} 1.0' in metrics
