"""What only the upstream can see: how far each answer got, whether the client hung up, which connection."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from ferryman.testing import Delivery, FakeOpenAI, Reply

CHAT = "/v1/chat/completions"
HEADERS = {"Authorization": "Bearer k"}


def chat_body(*, stream: bool) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def ended(delivery: Delivery) -> bool:
    """`delivery.wait`, off the event loop: the loop must keep running to close the test's connection."""
    return await asyncio.to_thread(delivery.wait, 2)


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[bytes]:
    """Read SSE events until `count` have arrived (or the body ends)."""
    events: list[bytes] = []
    buffer = b""
    while len(events) < count:
        chunk = await response.content.readany()
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n\n")
        events.extend(complete)
    return events


async def test_a_stream_read_to_the_end_is_complete_and_counts_every_event(
    openai_fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    openai_fake.script.reply(Reply.text("a b c", chunks=3))
    async with http.post(
        openai_fake.base_url + "/chat/completions", json=chat_body(stream=True), headers=HEADERS
    ) as response:
        events = [event for event in (await response.read()).split(b"\n\n") if event]
    delivery = openai_fake.last_request.delivery
    assert await ended(delivery)
    assert delivery.outcome == "complete"
    assert not delivery.client_disconnected
    assert delivery.events_sent == len(events)  # the text deltas, the finish chunk and [DONE]
    assert len(events) >= 5


async def test_a_client_that_hangs_up_mid_stream_is_seen_as_disconnected(
    openai_fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    openai_fake.script.reply(Reply.text(" ".join(["w"] * 40), chunks=40, chunk_delay=0.05))
    response = await http.post(
        openai_fake.base_url + "/chat/completions", json=chat_body(stream=True), headers=HEADERS
    )
    assert len(await read_events(response, 2)) >= 2
    delivery = openai_fake.last_request.delivery
    assert delivery.outcome is None  # still sending
    hung_up = time.monotonic()
    response.close()  # closes the connection, as a client that gives up does
    assert await ended(delivery)
    assert time.monotonic() - hung_up < 1  # seen at once, not when the 2 s stream would have ended
    assert delivery.outcome == "disconnected"
    assert delivery.client_disconnected
    assert 2 <= delivery.events_sent < 10


async def test_a_scripted_drop_is_not_mistaken_for_the_client_leaving(
    openai_fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    openai_fake.script.reply(Reply.drop(after_chunks=2))
    async with http.post(
        openai_fake.base_url + "/chat/completions", json=chat_body(stream=True), headers=HEADERS
    ) as response:
        try:
            await response.read()
        except aiohttp.ClientPayloadError:
            pass  # the cut the script asked for
    delivery = openai_fake.last_request.delivery
    assert await ended(delivery)
    assert (delivery.outcome, delivery.events_sent) == ("dropped", 2)
    assert not delivery.client_disconnected


async def test_stopping_the_fake_mid_stream_is_not_mistaken_for_the_client_leaving(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI() as fake:
        fake.script.reply(Reply.text("slow " * 20, chunks=20, chunk_delay=0.2))
        response = await http.post(
            fake.base_url + "/chat/completions", json=chat_body(stream=True), headers=HEADERS
        )
        await read_events(response, 1)
    response.close()
    delivery = fake.last_request.delivery
    assert await ended(delivery)
    assert delivery.outcome == "stopped"
    assert delivery.events_sent < 20


async def test_a_plain_answer_is_complete_with_no_events(
    openai_fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    url = openai_fake.base_url + "/chat/completions"
    async with http.post(url, json=chat_body(stream=False), headers=HEADERS) as response:
        assert response.status == 200
        await response.read()
    delivery = openai_fake.last_request.delivery
    assert await ended(delivery)
    assert (delivery.outcome, delivery.events_sent) == ("complete", 0)


async def test_a_refused_request_is_complete_too(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key="right") as fake:
        async with http.post(fake.base_url + "/chat/completions", json=chat_body(stream=False)) as response:
            assert response.status == 401
        assert await ended(fake.last_request.delivery)
        assert fake.last_request.delivery.outcome == "complete"


async def test_requests_on_one_kept_alive_connection_share_its_number(openai_fake: FakeOpenAI) -> None:
    url = openai_fake.base_url + "/chat/completions"
    async with aiohttp.ClientSession(headers=HEADERS) as first:
        for _ in range(3):
            async with first.post(url, json=chat_body(stream=False)) as response:
                await response.read()
    async with aiohttp.ClientSession(headers=HEADERS) as second:
        async with second.post(url, json=chat_body(stream=False)) as response:
            await response.read()
        async with second.post(
            url, json=chat_body(stream=False), headers={"Connection": "close"}
        ) as response:
            await response.read()
        async with second.post(url, json=chat_body(stream=False)) as response:
            await response.read()
    assert [request.connection for request in openai_fake.requests] == [1, 1, 1, 2, 2, 3]


async def test_connection_numbers_continue_after_clear_requests(
    openai_fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    async with http.get(openai_fake.base_url + "/models", headers=HEADERS) as response:
        await response.read()
    openai_fake.clear_requests()
    async with (
        aiohttp.ClientSession() as other,
        other.get(openai_fake.base_url + "/models", headers=HEADERS) as response,
    ):
        await response.read()
    assert [request.connection for request in openai_fake.requests] == [2]
