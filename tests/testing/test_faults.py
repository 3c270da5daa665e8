"""Failure injection: delays, slow streams, dropped connections, malformed chunks and non-JSON bodies."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest

from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer, Reply

USER = "tell me a story"


@dataclass(frozen=True)
class StreamCall:
    """A raw streaming request in one provider's format, and how its frames end."""

    fake_class: type[FakeServer]
    path: str
    headers: dict[str, str]
    body: dict[str, object]
    done_marker: str


STREAM_CALLS = {
    "openai": StreamCall(
        FakeOpenAI,
        "/v1/chat/completions",
        {"Authorization": "Bearer k"},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": USER}], "stream": True},
        "data: [DONE]",
    ),
    "anthropic": StreamCall(
        FakeAnthropic,
        "/v1/messages",
        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": USER}],
            "stream": True,
        },
        "event: message_stop",
    ),
    "gemini": StreamCall(
        FakeGemini,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"x-goog-api-key": "k"},
        {"contents": [{"role": "user", "parts": [{"text": USER}]}]},
        '"finishReason":"STOP"',
    ),
}


@pytest.fixture(params=sorted(STREAM_CALLS))
def stream_call(request: pytest.FixtureRequest) -> Iterator[tuple[FakeServer, StreamCall]]:
    call = STREAM_CALLS[request.param]
    with call.fake_class() as fake:
        yield fake, call


def split_frames(raw: bytes) -> list[str]:
    return [frame for frame in re.split(r"\r?\n\r?\n", raw.decode()) if frame]


def frame_json(frame: str) -> Any:
    data = [line.removeprefix("data: ") for line in frame.splitlines() if line.startswith("data: ")]
    return json.loads("\n".join(data))


async def read_until_cut(response: aiohttp.ClientResponse) -> tuple[bytes, BaseException | None]:
    """Everything the server sent before the body ended, and the error that ended it early (if any)."""
    received = b""
    try:
        async for piece in response.content.iter_any():
            received += piece
    except aiohttp.ClientPayloadError as exc:
        return received, exc
    return received, None


async def test_every_fake_streams_to_completion_by_default(stream_call, http):
    fake, call = stream_call
    async with http.post(fake.url + call.path, json=call.body, headers=call.headers) as response:
        raw, error = await read_until_cut(response)

    assert error is None
    assert call.done_marker in split_frames(raw)[-1]


async def test_drop_after_chunks_cuts_the_stream_mid_body(stream_call, http):
    fake, call = stream_call
    fake.script.reply(Reply.drop(after_chunks=2))

    async with http.post(fake.url + call.path, json=call.body, headers=call.headers) as response:
        assert response.status == 200
        raw, error = await read_until_cut(response)

    assert isinstance(error, aiohttp.ClientPayloadError)
    assert len(split_frames(raw)) == 2


async def test_drop_is_always_before_the_end_of_the_stream(stream_call, http):
    fake, call = stream_call
    fake.script.reply(Reply.drop(after_chunks=1000, text="short"))

    async with http.post(fake.url + call.path, json=call.body, headers=call.headers) as response:
        raw, error = await read_until_cut(response)

    assert error is not None
    assert call.done_marker not in raw.decode()


async def test_drop_before_the_response_disconnects(stream_call, http):
    fake, call = stream_call
    fake.script.reply(Reply.drop())

    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(fake.url + call.path, json=call.body, headers=call.headers):
            pass
    assert len(fake.requests) == 1


async def test_malformed_chunk_follows_the_good_ones(stream_call, http):
    fake, call = stream_call
    fake.script.reply(Reply.malformed(after_chunks=1))

    async with http.post(fake.url + call.path, json=call.body, headers=call.headers) as response:
        frames = split_frames(await response.read())

    frame_json(frames[0])
    with pytest.raises(ValueError):
        frame_json(frames[1])
    assert call.done_marker in frames[-1]


async def test_slow_upstream_delivers_the_first_chunk_before_finishing(stream_call, http):
    fake, call = stream_call
    fake.script.reply(Reply.text("a b c", chunks=3, chunk_delay=0.1))

    async with http.post(fake.url + call.path, json=call.body, headers=call.headers) as response:
        started = time.monotonic()
        first = await response.content.readany()
        first_at = time.monotonic() - started
        await response.read()
        done_at = time.monotonic() - started

    assert first.startswith((b"data: ", b"event: "))
    assert done_at - first_at >= 0.18  # at least two more 0.1 s gaps came after the first chunk
    assert first_at < done_at / 2


async def test_error_after_chunks_ends_the_stream_with_an_error_event(stream_call, http):
    fake, call = stream_call
    fake.script.reply(Reply.error(503, "try later", after_chunks=1))

    async with http.post(fake.url + call.path, json=call.body, headers=call.headers) as response:
        assert response.status == 200
        frames = split_frames(await response.read())

    assert len(frames) == 2
    assert "try later" in json.dumps(frame_json(frames[1]))
    assert "error" in frame_json(frames[1])


async def test_delay_holds_back_the_response_headers(openai_fake, http):
    openai_fake.script.reply(Reply.text("late", delay=0.3))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": USER}]}

    started = time.monotonic()
    async with http.post(
        f"{openai_fake.base_url}/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        waited = time.monotonic() - started
        assert (await response.json())["choices"][0]["message"]["content"] == "late"

    assert waited >= 0.3


def test_delay_longer_than_the_client_timeout_is_a_timeout(openai_fake):
    openai_fake.script.reply(Reply.text("too late", delay=1.0))

    with (
        openai.OpenAI(base_url=openai_fake.base_url, api_key="k", max_retries=0, timeout=0.2) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": USER}])


def test_dropped_connection_is_a_connection_error_for_the_sdk(openai_fake, openai_client):
    openai_fake.script.reply(Reply.drop(), Reply.drop(after_chunks=1))

    for _ in range(2):
        with pytest.raises(openai.APIConnectionError):
            openai_client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": USER}]
            )


def test_dropped_stream_fails_the_anthropic_sdk_after_some_events(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.drop(after_chunks=2))

    received = []
    # anthropic 2.x lets its transport's error out of a stream unwrapped, so match on the message
    with pytest.raises(Exception, match="incomplete chunked read"):
        for event in anthropic_client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=50,
            messages=[{"role": "user", "content": USER}],
            stream=True,
        ):
            received.append(event.type)

    assert received == ["message_start", "content_block_start"]


def test_malformed_chunk_breaks_the_sdk_stream(openai_fake, openai_client):
    openai_fake.script.reply(Reply.malformed(after_chunks=2))

    with pytest.raises(json.JSONDecodeError):
        list(
            openai_client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": USER}], stream=True
            )
        )


async def test_malformed_plain_body_is_truncated_json(openai_fake, http):
    openai_fake.script.reply(Reply.malformed())
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": USER}]}

    async with http.post(
        f"{openai_fake.base_url}/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        text = await response.text()

    assert text.startswith('{"id":"chatcmpl-')
    with pytest.raises(ValueError):
        json.loads(text)


async def test_drop_after_chunks_on_a_plain_request_sends_half_the_body(anthropic_fake, http):
    anthropic_fake.script.reply(Reply.drop(after_chunks=1))
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": USER}]}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}

    async with http.post(f"{anthropic_fake.base_url}/v1/messages", json=body, headers=headers) as response:
        assert response.status == 200
        raw, error = await read_until_cut(response)

    assert isinstance(error, aiohttp.ClientPayloadError)
    assert 0 < len(raw) < (response.content_length or 0)


@pytest.mark.parametrize("status", [200, 502])
async def test_not_json_body(gemini_fake, http, status):
    gemini_fake.script.reply(Reply.not_json("<html>proxy says no</html>", status=status))
    url = f"{gemini_fake.base_url}/v1beta/models/gemini-2.5-flash:generateContent?key=k"

    async with http.post(url, json={"contents": [{"parts": [{"text": USER}]}]}) as response:
        assert response.status == status
        assert response.content_type == "text/html"
        assert await response.text() == "<html>proxy says no</html>"
