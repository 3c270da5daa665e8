"""`ScriptedUpstream`: an in-process `Upstream` that answers, streams or fails from a script.

The fake HTTP servers test a provider adapter's wire format; the core (pipeline, attempts, fallbacks,
budgets) needs none of that, only the canonical types and the errors an adapter raises. So, like
httpx's `MockTransport`, this upstream sits where a provider would and plays a queue of steps, one
per call, with no socket, no thread and no clock unless a step asks for a delay:

    up = ScriptedUpstream(name="a")
    up.script(Fail.status(503, retry_after=1.0), Answer.text("hi", usage=Usage(3, 2)))
    up.script(Stream.text("a b c", chunks=3, fail_after=2), times=2)

A step fits any call where that makes sense: an `Answer` asked for as a stream is streamed, a
`Stream` asked for whole is played (delays, failure, hang) then collapsed into its answer, a `Fail`
fails anything (a stream on its first read, as real providers do). A step that cannot fit (an
embedding for a chat, text for `embed`) raises `TypeError`: a bug in the test's script. Tokens are
words, counted as the HTTP fakes count them, so tests can pin exact numbers.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    FinishReason,
    Message,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from ferryman.core.upstream import StreamBatch
from ferryman.errors import ProviderError, UpstreamConnectionError, UpstreamStatusError, UpstreamTimeoutError
from ferryman.testing._script import Usage as FakeUsage
from ferryman.testing._turn import count_words, embedding_vector, split_evenly

__all__ = ["Answer", "Fail", "ScriptedCall", "ScriptedUpstream", "Step", "Stream"]

PROVIDER = "scripted"
DEFAULT_DIMENSIONS = 8

UsageSpec: TypeAlias = Usage | FakeUsage | Literal["words"] | None
"""Token usage a step reports: exact counts (either `Usage` type), `"words"` to count them, or None."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: `message` (None echoes the last user text), or an embedding (`for_embedding`).

    `usage="words"` counts prompt and answer words; None reports no usage (zeros when answered whole).
    """

    message: Message | None = None
    finish: FinishReason = "stop"
    usage: UsageSpec = "words"
    for_embedding: bool = False
    dims: int | None = None

    @classmethod
    def echo(cls, *, usage: UsageSpec = "words") -> Answer:
        """The default: `"echo: <last user text>"` for chat, text-derived vectors for `embed`."""
        return cls(usage=usage)

    @classmethod
    def text(cls, text: str, *, finish: FinishReason = "stop", usage: UsageSpec = "words") -> Answer:
        """Answer `text`, stopping for `finish`."""
        return cls(Message(role="assistant", parts=(TextPart(text),)), finish, usage)

    @classmethod
    def tool_call(
        cls,
        name: str,
        arguments: Mapping[str, object] | None = None,
        *,
        id: str = "call_scripted_0",
        usage: UsageSpec = "words",
    ) -> Answer:
        """Call tool `name` with `arguments` (sent as compact JSON), finishing with `"tool_calls"`."""
        call = ToolCall(id, name, json.dumps(dict(arguments or {}), separators=(",", ":")))
        return cls(Message(role="assistant", tool_calls=(call,)), "tool_calls", usage)

    @classmethod
    def embedding(cls, dims: int | None = None, *, usage: UsageSpec = "words") -> Answer:
        """One vector per input, derived from its text; `dims` defaults to the request's, else 8."""
        return cls(usage=usage, for_embedding=True, dims=dims)


@dataclass(frozen=True, slots=True)
class Stream:
    """A streamed answer: `answer`'s events, `batch` per `StreamBatch`, `delay` seconds apart.

    Text and each tool call's arguments arrive in `chunks` deltas. After `fail_after` batches the
    stream raises `error` (a dropped connection by default); after `hang_after` it awaits forever,
    so a test can cancel it mid-stream. Either count may exceed the batches: then it acts at the end.
    """

    answer: Answer = field(default_factory=Answer)
    chunks: int = 1
    batch: int = 1
    delay: float = 0.0
    fail_after: int | None = None
    error: ProviderError | None = None
    hang_after: int | None = None

    def __post_init__(self) -> None:
        if self.chunks < 1 or self.batch < 1:
            raise ValueError("Stream needs chunks >= 1 and batch >= 1")
        if self.fail_after is not None and self.hang_after is not None:
            raise ValueError("a Stream either fails or hangs, not both")

    @classmethod
    def text(
        cls,
        text: str,
        *,
        chunks: int = 1,
        batch: int = 1,
        delay: float = 0.0,
        finish: FinishReason = "stop",
        usage: UsageSpec = "words",
        fail_after: int | None = None,
        error: ProviderError | None = None,
    ) -> Stream:
        """Stream `text`: StreamStart, `chunks` TextDeltas, Finish, UsageReport."""
        answer = Answer.text(text, finish=finish, usage=usage)
        return cls(answer, chunks, batch, delay, fail_after, error)

    @classmethod
    def hang(cls, after: int = 1, *, answer: Answer | None = None) -> Stream:
        """Yield `after` batches (of the echo by default), then never another: for cancellation tests."""
        return cls(answer or Answer(), hang_after=after)


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise `exception`, exactly this instance, as the adapter of a failing provider would."""

    exception: ProviderError

    @classmethod
    def status(cls, status: int, message: str | None = None, *, retry_after: float | None = None) -> Fail:
        """The upstream answered `status` (with a `retry-after` of `retry_after` seconds, if given)."""
        text = message or f"scripted upstream answered {status}"
        return cls(
            UpstreamStatusError(text, provider=PROVIDER, upstream_status=status, retry_after=retry_after)
        )

    @classmethod
    def timeout(cls, message: str = "scripted upstream timed out") -> Fail:
        """The upstream did not answer in time."""
        return cls(UpstreamTimeoutError(message, provider=PROVIDER))

    @classmethod
    def connection(cls, message: str = "scripted upstream refused the connection") -> Fail:
        """The upstream could not be reached."""
        return cls(UpstreamConnectionError(message, provider=PROVIDER))

    @classmethod
    def error(cls, exception: ProviderError) -> Fail:
        """Raise `exception` itself, for provider errors the other constructors do not build."""
        return cls(exception)


Step: TypeAlias = Answer | Stream | Fail
"""What one call to a `ScriptedUpstream` gets."""


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One call as the upstream received it, so tests can assert what the core sent and how often."""

    kind: Literal["chat", "stream", "embed"]
    request: ChatRequest | EmbeddingRequest


class ScriptedUpstream:
    """An `Upstream` that plays `script`ed steps, one per call, then its default (an echo).

    `label` tells several apart in a test (`name` is the protocol's class-level provider name).
    `streams_opened` counts streams read at least once and `streams_closed` those finished, failed
    or closed, so a test can assert the core closes every stream it opens. A stream never read
    consumes no step and records no call: like a real provider, it has sent nothing yet.
    """

    name: ClassVar[str] = PROVIDER
    default_api_base: ClassVar[str] = ""  # in-process: nothing to reach
    gen_ai_system: ClassVar[str] = "ferryman.scripted"

    def __init__(self, name: str = PROVIDER) -> None:
        self.label = name
        self.calls: list[ScriptedCall] = []
        self.closed = False
        self.streams_opened = 0
        self.streams_closed = 0
        self._steps: deque[Step] = deque()
        self._default: Step = Answer()

    def script(self, *steps: Step, times: int = 1) -> None:
        """Queue `steps` in order, the whole sequence `times` times (`a b a b` for `times=2`)."""
        self._steps.extend(steps * times)

    def set_default(self, step: Step | None) -> None:
        """Play `step` whenever the script is empty; None restores the echo."""
        self._default = step if step is not None else Answer()

    @property
    def pending(self) -> int:
        """How many scripted steps no call has consumed yet."""
        return len(self._steps)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Answer whole; a `Stream` step is played to its end first, so its delays and faults apply."""
        step = self._take("chat", request)
        if isinstance(step, Fail):
            raise step.exception.with_traceback(None)
        if isinstance(step, Stream):
            sent = _cut(step, len(_batches(step, request, self._response_id())))
            await asyncio.sleep(step.delay * max(0, sent - 1))
            await _interrupt(step, sent)
            step = step.answer
        return _response(_checked(step), request, self._response_id())

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """Stream the next step; a `Fail` or `fail_after=0` raises on the first read."""
        self.streams_opened += 1
        try:
            step = self._take("stream", request)
            if isinstance(step, Fail):
                raise step.exception.with_traceback(None)
            stream = step if isinstance(step, Stream) else Stream(step)
            batches = _batches(stream, request, self._response_id())
            sent = _cut(stream, len(batches))
            for index in range(sent):
                if index and stream.delay:
                    await asyncio.sleep(stream.delay)
                yield batches[index]
            await _interrupt(stream, sent)
        finally:
            self.streams_closed += 1

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed each input into a vector derived from its text, unless the step fails."""
        step = self._take("embed", request)
        if isinstance(step, Fail):
            raise step.exception.with_traceback(None)
        if isinstance(step, Stream) or step.message is not None:
            raise TypeError(f"ScriptedUpstream: embed() got a chat step: {step!r}")
        dims = step.dims or request.dimensions or DEFAULT_DIMENSIONS
        vectors = tuple(embedding_vector(text, dims) for text in request.inputs)
        words = sum(count_words(text) for text in request.inputs)
        return EmbeddingResponse(request.model, vectors, _usage(step.usage, words, 0) or Usage())

    async def aclose(self) -> None:
        """Nothing to release; recorded so tests can assert the owner closed it."""
        self.closed = True

    def _take(
        self, kind: Literal["chat", "stream", "embed"], request: ChatRequest | EmbeddingRequest
    ) -> Step:
        self.calls.append(ScriptedCall(kind, request))
        return self._steps.popleft() if self._steps else self._default

    def _response_id(self) -> str:
        return f"scripted-{len(self.calls)}"


def _checked(answer: Answer) -> Answer:
    if answer.for_embedding:
        raise TypeError(f"ScriptedUpstream: a chat call got an embedding step: {answer!r}")
    return answer


def _message(answer: Answer, request: ChatRequest) -> Message:
    if answer.message is not None:
        return answer.message
    last_user = next((m.text for m in reversed(request.messages) if m.role == "user" and m.text), "")
    return Message(role="assistant", parts=(TextPart(f"echo: {last_user}"),))


def _answer_usage(answer: Answer, request: ChatRequest, message: Message) -> Usage | None:
    prompt = sum(count_words(m.text) for m in request.messages)
    said = message.text + "".join(f" {call.name} {call.arguments}" for call in message.tool_calls)
    return _usage(answer.usage, prompt, count_words(said))


def _usage(spec: UsageSpec, input_words: int, output_words: int) -> Usage | None:
    if spec == "words":
        return Usage(input_tokens=input_words, output_tokens=output_words)
    if isinstance(spec, FakeUsage):
        return Usage(
            spec.input_tokens,
            spec.output_tokens,
            spec.cached_tokens,
            spec.cache_write_tokens,
            spec.reasoning_tokens,
        )
    return spec


def _response(answer: Answer, request: ChatRequest, response_id: str) -> ChatResponse:
    message = _message(answer, request)
    usage = _answer_usage(answer, request, message) or Usage()
    return ChatResponse(response_id, request.model, message, answer.finish, usage)


def _batches(stream: Stream, request: ChatRequest, response_id: str) -> list[StreamBatch]:
    """The stream's events, in the canonical order, grouped `stream.batch` at a time."""
    answer = _checked(stream.answer)
    message = _message(answer, request)
    events: list[StreamEvent] = [StreamStart(response_id, request.model)]
    events += [TextDelta(piece) for piece in split_evenly(message.text, stream.chunks)]
    for index, call in enumerate(message.tool_calls):
        events.append(ToolCallStart(index, call.id, call.name))
        events += [ToolCallDelta(index, piece) for piece in split_evenly(call.arguments, stream.chunks)]
    events.append(Finish(answer.finish))
    usage = _answer_usage(answer, request, message)
    if usage is not None:
        events.append(UsageReport(usage))
    return [events[i : i + stream.batch] for i in range(0, len(events), stream.batch)]


def _cut(stream: Stream, total: int) -> int:
    """How many of `total` batches go out before the stream fails or hangs."""
    stop = stream.fail_after if stream.fail_after is not None else stream.hang_after
    return total if stop is None else min(stop, total)


async def _interrupt(stream: Stream, sent: int) -> None:
    """End the stream as scripted: raise its error, hang until cancelled, or simply return."""
    if stream.fail_after is not None:
        error = stream.error or UpstreamConnectionError(
            f"scripted stream dropped after {sent} batches", provider=PROVIDER
        )
        raise error.with_traceback(None)
    if stream.hang_after is not None:
        await asyncio.Event().wait()
