"""The request pipeline: an ordered list of stages around the attempt loop, composed in one place.

    api/  ── Exchange (caller + canonical request) ──▶ Pipeline
                stage 1 .enter ─▶ stage 2 .enter ─▶ … ─▶ AttemptLoop ─▶ upstream
                stage 1 .exit  ◀─ stage 2 .exit  ◀─ … ◀─ (answer, error, cancel)

A stage refuses a request by raising a `FerrymanError` from `enter`, answers it by itself by returning
an answer (a cache hit; later stages and the upstream are then skipped), or passes it on by returning
None. Every stage whose `enter` returned sees `exit` exactly once, in reverse order, when the request
— or its stream — ends: answered, failed, failed mid-stream, or abandoned by the client. A stage that
keeps per-request state (a reservation, a rate-limit slot) keeps it in `exchange.notes`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from ferryman.core._shield import Shield
from ferryman.core.attempts import AttemptLoop
from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    Message,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    UsageReport,
)
from ferryman.core.exchange import Exchange
from ferryman.core.observer import Observer
from ferryman.core.routing import Target
from ferryman.core.upstream import StreamBatch
from ferryman.errors import FerrymanError

log = logging.getLogger("ferryman.pipeline")

Answer: TypeAlias = ChatResponse | EmbeddingResponse


class ClientGone(Exception):
    """The client stopped reading before the answer ended (it hung up, or its task was cancelled)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, as each stage's `exit` sees it.

    `answered`: the client got its answer (`response` holds it when it was a whole one, or a stream
    whose exchange asked for it assembled, `exchange.assemble_stream`); `failed`: `error` says why;
    `cancelled`: the client went away before the end.
    """

    kind: Literal["answered", "failed", "cancelled"]
    error: BaseException | None = None
    response: Answer | None = None


class Stage(Protocol):
    """One per-request concern (model access, limits, budgets, cache): see the module docstring."""

    name: str

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Raise to refuse, return an answer to answer by itself, or return None to pass it on."""
        ...

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """The request has ended; called exactly once after a successful `enter`."""
        ...


class Pipeline:
    """Runs an exchange through the stages and the attempt loop; see the module docstring."""

    def __init__(self, stages: Sequence[Stage], attempts: AttemptLoop, observer: Observer) -> None:
        self.stages = tuple(stages)
        self.attempts = attempts
        self.observer = observer
        self._shield = Shield()

    async def chat(self, exchange: Exchange) -> ChatResponse:
        """A whole chat answer."""
        request = _chat_request(exchange)
        entered: list[Stage] = []
        try:
            answer = await self._enter(exchange, entered)
            if answer is None:
                answer = await self.attempts.chat(exchange, request)
            elif not isinstance(answer, ChatResponse):
                raise TypeError(f"a stage answered a chat request with {type(answer).__name__}")
        except BaseException as exc:
            await self._exit(exchange, entered, _ended_by(exc))
            raise
        await self._exit(exchange, entered, Outcome("answered", response=answer))
        return answer

    async def embed(self, exchange: Exchange) -> EmbeddingResponse:
        """Embeddings."""
        request = exchange.request
        if not isinstance(request, EmbeddingRequest):
            raise TypeError("embed() needs an exchange holding an EmbeddingRequest")
        entered: list[Stage] = []
        try:
            answer = await self._enter(exchange, entered)
            if answer is None:
                answer = await self.attempts.embed(exchange, request)
            elif not isinstance(answer, EmbeddingResponse):
                raise TypeError(f"a stage answered an embedding request with {type(answer).__name__}")
        except BaseException as exc:
            await self._exit(exchange, entered, _ended_by(exc))
            raise
        await self._exit(exchange, entered, Outcome("answered", response=answer))
        return answer

    async def count(self, exchange: Exchange, count: Callable[[Target], Awaitable[int]]) -> int:
        """The input tokens of the exchange's chat request, as `count` gives them for the deployment
        the attempt loop picks (its upstream's counting API, or the gateway's estimate for its model).
        The stages see an operation no provider bills (`Exchange.billed`), so it costs nothing."""
        _chat_request(exchange)
        exchange.operation = "count_tokens"
        entered: list[Stage] = []
        try:
            answer = await self._enter(exchange, entered)
            if answer is not None:
                raise TypeError(f"a stage answered a token count with {type(answer).__name__}")
            tokens = await self.attempts.count(exchange, count)
        except BaseException as exc:
            await self._exit(exchange, entered, _ended_by(exc))
            raise
        await self._exit(exchange, entered, Outcome("answered"))
        return tokens

    async def stream(self, exchange: Exchange) -> AnswerStream:
        """A streamed chat answer whose first batch has arrived (so failures before it are still
        errors with a status, and fall back); iterate it, and always `aclose` it."""
        request = _chat_request(exchange)
        entered: list[Stage] = []
        try:
            answer = await self._enter(exchange, entered)
            if answer is None:
                batches = await self.attempts.stream(exchange, request)
            elif isinstance(answer, ChatResponse):
                batches = _replay(answer)
            else:
                raise TypeError(f"a stage answered a chat request with {type(answer).__name__}")
        except BaseException as exc:
            await self._exit(exchange, entered, _ended_by(exc))
            raise
        return AnswerStream(self, exchange, entered, batches)

    def finish(self, exchange: Exchange, error: BaseException | None = None) -> None:
        """Close the books on a request, answered or refused: called exactly once, by whoever answered
        the client, after the last byte (so the access log can hold the whole response)."""
        exchange.finished = time.perf_counter()
        if error is not None:
            exchange.status = "error"
            exchange.error = _error_name(error)
            exchange.http_status = error.status if isinstance(error, FerrymanError) else None
        else:
            exchange.http_status = 200
        self.observer.request_finished(exchange, error)

    async def _enter(self, exchange: Exchange, entered: list[Stage]) -> Answer | None:
        for stage in self.stages:
            answer = await stage.enter(exchange)
            entered.append(stage)
            if answer is not None:
                exchange.answered_by = stage.name
                return answer
        return None

    async def _exit(self, exchange: Exchange, entered: list[Stage], outcome: Outcome) -> None:
        """Every entered stage's exit, in reverse order; a cancelled request's run shielded, so that
        releasing what it held is not itself cancelled."""
        if not entered:
            return
        if outcome.kind != "cancelled":
            await _exit_all(exchange, entered, outcome)
            return
        await self._shield.run(_exit_all(exchange, entered, outcome))


class AnswerStream:
    """A stream of batches whose stages exit exactly once: when it ends, fails, or is closed early.

    The api layer iterates it and calls `aclose` in every case (a client that hangs up never lets
    the iteration end); `aclose` after the end does nothing. When a stage set `exchange.assemble_stream`
    on entry (the response cache, to store the answer), the events are kept as they pass and the
    stages' exits see the whole answer they add up to; otherwise nothing is kept.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        exchange: Exchange,
        entered: list[Stage],
        batches: AsyncGenerator[StreamBatch, None],
    ) -> None:
        self._pipeline = pipeline
        self._exchange = exchange
        self._entered = entered
        self._batches = batches
        self._ended = False
        self._events: list[StreamEvent] | None = [] if exchange.assemble_stream else None

    def __aiter__(self) -> AsyncIterator[StreamBatch]:
        return self

    async def __anext__(self) -> StreamBatch:
        if self._ended:
            raise StopAsyncIteration
        try:
            batch = await anext(self._batches)
        except StopAsyncIteration:
            whole = _assemble(self._events, self._exchange.model) if self._events is not None else None
            await self._end(Outcome("answered", response=whole))
            raise
        except BaseException as exc:
            await self._end(_ended_by(exc))
            raise
        if self._events is not None:
            self._events.extend(batch)
        return batch

    async def aclose(self) -> None:
        """Stop the stream; if it had not ended, its stages see it as cancelled."""
        await self._end(Outcome("cancelled"))

    async def _end(self, outcome: Outcome) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            await self._batches.aclose()
        finally:
            await self._pipeline._exit(self._exchange, self._entered, outcome)


async def _exit_all(exchange: Exchange, entered: list[Stage], outcome: Outcome) -> None:
    """Run every exit even when one fails; the first failure is raised after all have run."""
    first_error: BaseException | None = None
    for stage in reversed(entered):
        try:
            await stage.exit(exchange, outcome)
        except Exception as exc:
            log.exception("stage %s failed on exit", stage.name)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


_GONE = (ClientGone, asyncio.CancelledError, GeneratorExit)


def _ended_by(error: BaseException) -> Outcome:
    if isinstance(error, _GONE):
        return Outcome("cancelled", error=error)
    return Outcome("failed", error=error)


def _error_name(error: BaseException) -> str:
    return "ClientGone" if isinstance(error, _GONE) else type(error).__name__


def _chat_request(exchange: Exchange) -> ChatRequest:
    if not isinstance(exchange.request, ChatRequest):
        raise TypeError("this call needs an exchange holding a ChatRequest")
    return exchange.request


async def _replay(response: ChatResponse) -> AsyncGenerator[StreamBatch, None]:
    """A whole answer (a stage's) as the one batch of events a stream of it would carry."""
    events: list[StreamEvent] = [StreamStart(response.id, response.model, response.created)]
    if response.message.text:
        events.append(TextDelta(response.message.text))
    for index, call in enumerate(response.message.tool_calls):
        events.append(ToolCallStart(index, call.id, call.name))
        events.append(ToolCallDelta(index, call.arguments))
    events += [Finish(response.finish_reason), UsageReport(response.usage)]
    yield events


def _assemble(events: Sequence[StreamEvent], model: str) -> ChatResponse | None:
    """A stream's events as the whole answer they add up to (the inverse of `_replay`), answering as
    `model`; None for a stream that never said how it began, why it finished, or what it used."""
    start: StreamStart | None = None
    finish: Finish | None = None
    usage: UsageReport | None = None
    text: list[str] = []
    calls: dict[int, tuple[ToolCallStart, list[str]]] = {}
    for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            if event.index in calls:
                calls[event.index][1].append(event.arguments)
        elif isinstance(event, ToolCallStart):
            calls[event.index] = (event, [])
        elif isinstance(event, StreamStart):
            start = event
        elif isinstance(event, Finish):
            finish = event
        elif isinstance(event, UsageReport):
            usage = event
    if start is None or finish is None or usage is None:
        return None
    ordered = (calls[index] for index in sorted(calls))
    tool_calls = tuple(ToolCall(call.id, call.name, "".join(arguments)) for call, arguments in ordered)
    joined = "".join(text)
    message = Message("assistant", (TextPart(joined),) if joined else (), tool_calls)
    return ChatResponse(start.id, model, message, finish.reason, usage.usage, start.created)
