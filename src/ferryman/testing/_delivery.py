"""Putting a rendered answer on the wire, with the script's delays and faults, and recording how it went."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from ferryman.testing._script import Drop, HttpError, Malformed, NotJson, Reply

Outcome = Literal["complete", "dropped", "disconnected", "stopped"]
"""How an answer ended: sent whole, cut by a scripted `Drop`, cut by the client hanging up, or cut by
the fake stopping."""


class Delivery:
    """How far the fake got in answering one request, filled in while it answers.

    A gateway must stop reading from (and so stop the request to) an upstream whose client has gone
    away; only the upstream can see that happen, so the fake records it here. The fake's thread writes
    and tests read, so every access takes a lock; `wait` blocks until the answer has ended.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._events_sent = 0
        self._outcome: Outcome | None = None

    @property
    def events_sent(self) -> int:
        """Stream events handed to the connection so far (0 for an answer that is not a stream)."""
        with self._lock:
            return self._events_sent

    @property
    def outcome(self) -> Outcome | None:
        """How the answer ended, or None while it is still being sent."""
        with self._lock:
            return self._outcome

    @property
    def client_disconnected(self) -> bool:
        """Whether the client closed the connection before the answer was complete."""
        return self.outcome == "disconnected"

    def wait(self, timeout: float) -> bool:
        """Block until the answer has ended (True) or `timeout` seconds have passed (False).

        From async code, call it as `await asyncio.to_thread(delivery.wait, timeout)`: blocking the
        event loop would also hold back the client's own hang-up that the test is waiting to see.
        """
        return self._ended.wait(timeout)

    def event_sent(self) -> None:
        """Count one more stream event handed to the connection (called by the fake)."""
        with self._lock:
            self._events_sent += 1

    def finish(self, outcome: Outcome) -> None:
        """Record how the answer ended; the first outcome recorded stands (called by the fake)."""
        with self._lock:
            if self._outcome is None:
                self._outcome = outcome
        self._ended.set()


@dataclass(frozen=True, slots=True)
class Event:
    """One stream event: its JSON `data` and, for providers that name events, its `name`."""

    data: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Framing:
    """How one provider frames stream events: SSE (with its line ending) or a streamed JSON array."""

    content_type: str = "text/event-stream; charset=utf-8"
    line_end: str = "\n"
    json_array: bool = False

    def piece(self, event: Event, index: int) -> bytes:
        """The bytes of the `index`-th event, separators included."""
        if self.json_array:
            return (("[" if index == 0 else ",\r\n") + event.data).encode()
        name = f"event: {event.name}{self.line_end}" if event.name else ""
        return f"{name}data: {event.data}{self.line_end}{self.line_end}".encode()

    def closing(self, count: int) -> bytes:
        """What ends a stream of `count` events (only a JSON array needs an end)."""
        if not self.json_array:
            return b""
        return b"]" if count else b"[]"


@dataclass(frozen=True, slots=True)
class Dialect:
    """What delivery needs to know about a provider: its stream framing and its error shapes."""

    framing: Framing
    error_body: Callable[[HttpError], object]
    stream_error: Callable[[HttpError], Event]


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's rendering of one turn: a JSON `body`, or `events` when the client streams."""

    body: object = None
    events: tuple[Event, ...] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def json_text(value: object) -> str:
    """Compact JSON, as the providers send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_bytes(value: object) -> bytes:
    """Compact JSON as UTF-8 bytes, ready for a response body."""
    return json_text(value).encode()


def error_response(dialect: Dialect, fault: HttpError) -> web.Response:
    """The plain HTTP error for `fault`, in the provider's shape unless the script gave a body."""
    body = fault.body if fault.body is not None else dialect.error_body(fault)
    return web.Response(
        status=fault.status,
        body=json_bytes(body),
        content_type="application/json",
        headers=dict(fault.headers),
    )


async def deliver(
    request: web.Request, reply: Reply, answer: Answer, dialect: Dialect, delivery: Delivery
) -> web.StreamResponse:
    """Answer `request` as `reply` says: wait, then send the body or stream, or misbehave on cue.

    Stream events sent and a scripted drop are recorded in `delivery`; the caller records the rest.
    """
    if reply.delay:
        await asyncio.sleep(reply.delay)
    fault = reply.fault
    if isinstance(fault, Drop) and fault.after_chunks is None:
        return _drop(request, web.Response(), delivery)
    if isinstance(fault, HttpError) and (answer.events is None or fault.after_chunks is None):
        return error_response(dialect, fault)
    if isinstance(fault, NotJson):
        return web.Response(status=fault.status, text=fault.body, content_type=fault.content_type)
    if answer.events is None:
        return await _send_body(request, answer, fault, delivery)
    return await _send_stream(request, reply, answer, dialect, delivery)


def _drop(request: web.Request, response: web.StreamResponse, delivery: Delivery) -> web.StreamResponse:
    # close() flushes what was written, then closes: the client sees a cut, not a reset.
    delivery.finish("dropped")
    if request.transport is not None:
        request.transport.close()
    return response


async def _send_body(
    request: web.Request, answer: Answer, fault: object, delivery: Delivery
) -> web.StreamResponse:
    payload = json_bytes(answer.body)
    if isinstance(fault, Malformed):
        payload = payload[: len(payload) // 2]
    if not isinstance(fault, Drop):
        return web.Response(body=payload, content_type="application/json", headers=dict(answer.headers))
    response = web.StreamResponse(headers=dict(answer.headers))
    response.content_type = "application/json"
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    return _drop(request, response, delivery)


async def _send_stream(
    request: web.Request, reply: Reply, answer: Answer, dialect: Dialect, delivery: Delivery
) -> web.StreamResponse:
    events, cut_at = _faulty_events(tuple(answer.events or ()), reply, dialect)
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", **answer.headers})
    response.headers["Content-Type"] = dialect.framing.content_type
    await response.prepare(request)
    for index, event in enumerate(events):
        if index == cut_at:
            return _drop(request, response, delivery)
        if index and reply.chunk_delay:
            await asyncio.sleep(reply.chunk_delay)
        await response.write(dialect.framing.piece(event, index))
        delivery.event_sent()
    closing = dialect.framing.closing(len(events))
    if closing:
        await response.write(closing)
    await response.write_eof()
    return response


def _faulty_events(
    events: tuple[Event, ...], reply: Reply, dialect: Dialect
) -> tuple[tuple[Event, ...], int | None]:
    """Apply a stream fault to the events; the second value is where to cut the connection."""
    fault = reply.fault
    last = max(len(events) - 1, 0)
    if isinstance(fault, Drop) and fault.after_chunks is not None:
        return events, min(fault.after_chunks, last)
    if isinstance(fault, HttpError) and fault.after_chunks is not None:
        return (*events[: min(fault.after_chunks, last)], dialect.stream_error(fault)), None
    if isinstance(fault, Malformed) and events:
        at = min(fault.after_chunks, last)
        broken = Event(events[at].data[: len(events[at].data) // 2], events[at].name)
        return (*events[:at], broken, *events[at:]), None
    return events, None
