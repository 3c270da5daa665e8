"""The chat flow shared by every ingress format: authenticate, parse, call the core, answer.

An ingress module supplies only what differs — how to parse its request and how to render answers,
streams and mid-stream errors (`ChatFormat`) — so the order of checks, the accounting and the log
line are written once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ferryman.api.auth import ANONYMOUS, Principal
from ferryman.api.body import read_json_object
from ferryman.api.state import AppState
from ferryman.core.canonical import ChatRequest, ChatResponse, JSONObject, StreamEvent
from ferryman.core.gateway import CallRecord
from ferryman.core.upstream import StreamBatch
from ferryman.errors import FerrymanError
from ferryman.observability.logging import log_request

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class StreamRenderer(Protocol):
    """A wire module's stream renderer (see `ferryman.wire`)."""

    def render(self, event: StreamEvent) -> bytes:
        """SSE frames for one canonical event."""
        ...

    def close(self) -> bytes:
        """Frames that end the stream."""
        ...


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """What an ingress format contributes to the shared flow."""

    render_response: Callable[[ChatResponse], JSONObject]
    make_renderer: Callable[[str, JSONObject], StreamRenderer]  # (client's model, client's body)
    render_stream_error: Callable[[FerrymanError], bytes]


@dataclass(slots=True)
class LoggedBodies:
    """A request's body and its answer as sent, kept only when `logging.log_bodies` is on."""

    request: JSONObject
    response: str = ""


def new_record(request: Request, model: str) -> CallRecord:
    """A fresh record for this request, timed from now (`model` may be filled in once parsed)."""
    return CallRecord(
        request_id=request.scope["state"]["request_id"], model=model, started=time.perf_counter()
    )


async def serve_chat(
    request: Request, parse: Callable[[JSONObject], ChatRequest], fmt: ChatFormat
) -> Response:
    """Run one chat request end to end and answer in the client's format."""
    state: AppState = request.app.state.ferryman
    record = new_record(request, model="")
    principal, bodies = ANONYMOUS, None
    try:
        principal = await state.auth.authenticate(request)
        body = await read_json_object(request, state.settings.server.max_body_bytes)
        chat_request = parse(body)
        record.model = chat_request.model
        state.auth.authorize_model(principal, chat_request.model)
        bodies = LoggedBodies(body) if state.settings.logging.log_bodies else None
        if chat_request.stream:
            batches = await state.gateway.open_stream(chat_request, record)
            renderer = fmt.make_renderer(chat_request.model, body)
            frames = _stream_body(state, record, batches, renderer, fmt, principal, bodies)
            return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
        response = await state.gateway.chat(chat_request, record)
    except FerrymanError as exc:
        finish_request(state, record, principal, exc, bodies)
        raise
    payload = orjson.dumps(fmt.render_response(response))
    if bodies is not None:
        bodies.response = payload.decode()
    finish_request(state, record, principal, None, bodies)
    return Response(payload, media_type="application/json")


async def _stream_body(
    state: AppState,
    record: CallRecord,
    batches: AsyncGenerator[StreamBatch, None],
    renderer: StreamRenderer,
    fmt: ChatFormat,
    principal: Principal,
    bodies: LoggedBodies | None,
) -> AsyncIterator[bytes]:
    """Render events as they arrive, one write per batch; an upstream failure mid-stream becomes an
    error frame."""
    error: BaseException | None = None
    try:
        async for batch in batches:
            frames = b"".join([renderer.render(event) for event in batch])
            if frames:
                if bodies is not None:
                    bodies.response += frames.decode()
                yield frames
        yield renderer.close()
    except FerrymanError as exc:
        error = exc
        yield fmt.render_stream_error(exc)
    except BaseException as exc:  # client gone (cancelled) or a bug: account for it, then re-raise
        error = exc
        raise
    finally:
        await batches.aclose()
        finish_request(state, record, principal, error, bodies)


def finish_request(
    state: AppState,
    record: CallRecord,
    principal: Principal,
    error: BaseException | None = None,
    bodies: LoggedBodies | None = None,
) -> None:
    """Record metrics and write the request's one log line (with the bodies only when asked for;
    the log formatter scrubs credentials out of them like out of every other string)."""
    state.gateway.finish(record, error)
    usage = record.usage
    fields: dict[str, object] = {
        "model": record.model,
        "provider": record.provider,
        "deployment": record.deployment,
        "key_alias": principal.key_alias,
        "team_id": principal.team_id,
        "status": record.status,
        "error": record.error,
        # a stream that fails mid-way was sent as 200; this is the status its error event carries
        "http_status": 200 if error is None else error.status if isinstance(error, FerrymanError) else None,
        "stream": record.stream,
        "attempts": record.attempts,
        "latency_ms": round(record.latency * 1000, 2),
        "upstream_ms": round(record.upstream_seconds * 1000, 2),
        "ttft_ms": None
        if record.time_to_first_token is None
        else round(record.time_to_first_token * 1000, 2),
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "cost_usd": record.cost,
    }
    if bodies is not None:
        fields["request_body"] = orjson.dumps(bodies.request).decode()
        fields["response_body"] = bodies.response
    log_request(fields)
