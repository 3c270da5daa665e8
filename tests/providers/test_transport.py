"""The upstream transport: kept-alive pooled connections, the connect timeout, and the end of a stream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from ferryman.core.canonical import ChatRequest, Message, TextDelta, TextPart
from ferryman.providers import create_provider
from ferryman.settings import Deployment
from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer

FAKES: dict[str, type[FakeServer]] = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "gemini": FakeGemini}
UPSTREAM_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
REQUESTS = 20  # enough that a stream which loses its connection now and then is caught


def chat(client: httpx.Client, model: str, *, stream: bool) -> httpx.Response:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "keep me alive"}]}
    return client.post("/v1/chat/completions", json=body)


@pytest.fixture(params=sorted(FAKES))
def upstream(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeServer]]:
    with FAKES[request.param]() as fake:
        yield request.param, fake


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_sequential_requests_reuse_one_upstream_connection(
    gateway_factory: Any, upstream: tuple[str, FakeServer], stream: bool
) -> None:
    provider, fake = upstream
    deployment = {
        "provider": provider,
        "model": UPSTREAM_MODELS[provider],
        "api_base": fake.base_url,
        "api_key": "k",
    }
    gateway = gateway_factory({"models": [{"name": "m", "deployments": [deployment]}]})
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(REQUESTS):
            response = chat(client, "m", stream=stream)
            assert response.status_code == 200, response.text
            assert "keep me alive" in response.text
    connections = [request.connection for request in fake.requests]
    assert len(connections) == REQUESTS
    assert len(set(connections)) == 1, f"{len(set(connections))} upstream connections for {REQUESTS} requests"


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port whose connects hang: a listener with a full accept queue that never accepts.

    Linux drops SYNs to a listener whose accept queue is full, so a connect waits (retransmitting SYNs)
    until the client's own timeout, just as it would towards a firewalled address, without leaving
    the machine.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):  # backlog 0 holds one connection; a few spare tries for other kernels
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            fillers.append(probe)
        else:
            pytest.fail("could not fill the accept queue of a loopback listener")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_connect_timeout_to_an_address_that_never_answers_is_504(
    gateway_factory: Any, blackhole: int, stream: bool
) -> None:
    deployment = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": f"http://127.0.0.1:{blackhole}/v1",
        "api_key": "k",
        "timeouts": {"connect": 0.3, "read": 30, "total": 60},
    }
    gateway = gateway_factory({"models": [{"name": "hole", "deployments": [deployment]}]})
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        started = time.monotonic()
        response = chat(client, "hole", stream=stream)
        elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert elapsed < 3, f"the connect timeout of 0.3 s took {elapsed:.1f} s"  # not the read or total timeout


async def test_a_stream_ends_at_done_even_when_the_upstream_keeps_its_body_open() -> None:
    """After `[DONE]` the provider waits only briefly for the body's end (to keep the connection)."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
    }

    async def never_ending(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        await asyncio.sleep(30)  # a misbehaving upstream: no end of body after [DONE]
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", never_ending)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    provider = create_provider(
        Deployment.model_validate(
            {"provider": "openai", "model": "gpt-4o-mini", "api_base": f"http://127.0.0.1:{port}/v1"}
        )
    )
    request = ChatRequest("gpt-4o-mini", (Message("user", (TextPart("hi"),)),), stream=True)
    try:
        started = time.monotonic()
        events = [event async for batch in provider.stream_chat(request) for event in batch]
        elapsed = time.monotonic() - started
    finally:
        await provider.aclose()
        await runner.cleanup()
    assert TextDelta("hi") in events
    assert elapsed < 1, f"the stream took {elapsed:.1f} s to end after [DONE]"
