"""The one sequence every inference route runs: authenticate, read, parse, pipeline, answer.

An ingress module supplies only what differs — how to parse its body and how to render answers,
streams and mid-stream errors (a `ChatFormat` or an `EmbeddingFormat`) — so the order of checks, the
pipeline call and the request's one log line are written once, here, for chat in every format,
streamed or not, and for embeddings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ferryman.api.body import read_json_object
from ferryman.api.errors import error_body, error_response
from ferryman.api.request_options import with_request_options
from ferryman.api.state import AppState
from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JSONObject,
    StreamEvent,
)
from ferryman.core.exchange import CanonicalRequest, Exchange
from ferryman.core.pipeline import AnswerStream, ClientGone
from ferryman.errors import FerrymanError

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Ingress(Protocol):
    """An ingress format's answer to an admitted request, and its shape of an error."""

    async def respond(self, state: AppState, exchange: Exchange, body: JSONObject) -> Response:
        """Run the pipeline and answer in this format; a whole answer also finishes the exchange."""
        ...

    def error_body(self, exc: FerrymanError) -> bytes:
        """A refusal or failure as this format's clients parse it."""
        ...


async def serve(
    request: Request, parse: Callable[[JSONObject], CanonicalRequest], ingress: Ingress
) -> Response:
    """Run one inference request end to end; anything refused on the way is finished here."""
    state: AppState = request.app.state.ferryman
    scope_state = request.scope["state"]
    client = request.scope.get("client")
    exchange = Exchange(
        request_id=scope_state["request_id"],
        spend_id=scope_state["spend_id"],
        client_ip=client[0] if client else None,
    )
    try:
        caller = await state.auth.authenticate(request)
        body = await read_json_object(request, state.settings.server.max_body_bytes)
        exchange.admit(caller, with_request_options(parse(body), request.headers))
        exchange.cache_control = request.headers.get("cache-control", "")  # no-cache / no-store opt-outs
        if state.settings.logging.log_bodies:
            exchange.request_body = body
        return await ingress.respond(state, exchange, body)
    except FerrymanError as exc:
        state.pipeline.finish(exchange, exc)
        # A refusal carries the stages' headers too (x-ratelimit-* on a 429).
        return error_response(exc, headers=exchange.headers, body=ingress.error_body(exc))


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
    """What a chat ingress format contributes to the shared flow."""

    render_response: Callable[[ChatResponse], JSONObject]
    make_renderer: Callable[[str, JSONObject], StreamRenderer]  # (client's model, client's body)
    render_stream_error: Callable[[FerrymanError], bytes]
    render_error: Callable[[FerrymanError], bytes] = error_body
    # Whether the format's SDKs skip SSE comment lines, as the SSE standard says (google-genai's
    # parser reads any line but `data:` as JSON, so Gemini streams carry no cost comment).
    cost_comment: bool = True

    async def respond(self, state: AppState, exchange: Exchange, body: JSONObject) -> Response:
        """A whole answer, or a stream that starts once its first batch has arrived."""
        assert isinstance(exchange.request, ChatRequest)  # noqa: S101 - the route parsed a chat request
        if exchange.stream:
            stream = await state.pipeline.stream(exchange)
            renderer = self.make_renderer(exchange.model, body)
            relay = _Relay(state, exchange, stream, renderer, self.render_stream_error, self.cost_comment)
            return _PipelineStreamingResponse(relay, answer_headers(exchange))
        response = await state.pipeline.chat(exchange)
        return _finish_whole(state, exchange, orjson.dumps(self.render_response(response)))

    def error_body(self, exc: FerrymanError) -> bytes:
        """This format's error body."""
        return self.render_error(exc)


@dataclass(frozen=True, slots=True)
class EmbeddingFormat:
    """What an embeddings ingress format contributes: how to render the vectors for the client."""

    render_response: Callable[[EmbeddingResponse, JSONObject], JSONObject]  # (answer, client's body)
    render_error: Callable[[FerrymanError], bytes] = error_body

    async def respond(self, state: AppState, exchange: Exchange, body: JSONObject) -> Response:
        """The vectors, rendered."""
        assert isinstance(exchange.request, EmbeddingRequest)  # noqa: S101 - the route parsed one
        response = await state.pipeline.embed(exchange)
        return _finish_whole(state, exchange, orjson.dumps(self.render_response(response, body)))

    def error_body(self, exc: FerrymanError) -> bytes:
        """This format's error body."""
        return self.render_error(exc)


def _finish_whole(state: AppState, exchange: Exchange, payload: bytes) -> Response:
    if exchange.request_body is not None:
        exchange.response_body = payload.decode()
    state.pipeline.finish(exchange)
    return Response(payload, media_type="application/json", headers=answer_headers(exchange))


def answer_headers(exchange: Exchange) -> dict[str, str]:
    """The governance headers of an answer: which model and deployment served it (a fallback model, if
    one answered), what it cost (whole answers; a stream's cost comes as its last comment line), and
    what the stages added."""
    headers = {"x-ferryman-model": exchange.served_model or exchange.model}
    if exchange.deployment:
        headers["x-ferryman-deployment"] = exchange.deployment
    if exchange.cost is not None and not exchange.stream:
        headers["x-ferryman-cost-usd"] = format_cost(exchange.cost)
    return headers | exchange.headers


def format_cost(cost: float) -> str:
    """Dollars with enough places for a one-token request, without float noise (`0.0000045`)."""
    return f"{cost:.10f}".rstrip("0").rstrip(".") if cost else "0"


class _Relay:
    """Renders a pipeline stream into SSE frames, one write per batch, and finishes the exchange
    exactly once however the stream ends: completed, failed mid-way (an error frame), or abandoned."""

    def __init__(
        self,
        state: AppState,
        exchange: Exchange,
        stream: AnswerStream,
        renderer: StreamRenderer,
        render_error: Callable[[FerrymanError], bytes],
        cost_comment: bool,
    ) -> None:
        self._state = state
        self._cost_comment_wanted = cost_comment
        self._exchange = exchange
        self._stream = stream
        self._renderer = renderer
        self._render_error = render_error
        self._finished = False
        self._completed = False
        if exchange.request_body is not None:
            exchange.response_body = ""

    async def frames(self) -> AsyncIterator[bytes]:
        """The response body."""
        error: BaseException | None = None
        try:
            async for batch in self._stream:
                frames = b"".join([self._renderer.render(event) for event in batch])
                if frames:
                    self._keep(frames)
                    yield frames
            closing = self._cost_comment() + self._renderer.close()
            self._keep(closing)
            self._completed = True
            yield closing
        except FerrymanError as exc:
            error = exc
            yield self._render_error(exc)
        except BaseException as exc:  # client gone (cancelled) or a bug: account for it, then re-raise
            error = exc
            raise
        finally:
            await self.close(error)

    async def close(self, error: BaseException | None = None) -> None:
        """End the stream (its stages exit) and write the request's log line, once."""
        if self._finished:
            return
        self._finished = True
        if error is None and not self._completed:
            error = ClientGone()
        try:
            await self._stream.aclose()
        finally:
            self._state.pipeline.finish(self._exchange, error)

    def _cost_comment(self) -> bytes:
        """`: ferryman-cost-usd=…`, an SSE comment every SDK's parser skips, before the stream's end.

        The stream's stages have exited by now (the iteration ended), so the cost is settled."""
        if self._exchange.cost is None or not self._cost_comment_wanted:
            return b""
        return f": ferryman-cost-usd={format_cost(self._exchange.cost)}\n\n".encode()

    def _keep(self, frames: bytes) -> None:
        if self._exchange.response_body is not None:
            self._exchange.response_body += frames.decode()


class _PipelineStreamingResponse(StreamingResponse):
    """A streaming response that closes its relay even when the body was never iterated (a client
    that hangs up before the first write), so the stages' exits and the log line are never skipped."""

    def __init__(self, relay: _Relay, headers: Mapping[str, str]) -> None:
        super().__init__(relay.frames(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
        self._close: Callable[[], Awaitable[None]] = relay.close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()
