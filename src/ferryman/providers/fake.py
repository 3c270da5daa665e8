"""The `fake` provider: deterministic answers with no network and no key, for demos and tests.

It echoes the last user message, honours `max_tokens` (counted in words), calls a tool when the
request *requires* one, and embeds text into a small vector derived from its hash. Token counts are
words, so tests and the first curl of a newcomer get the same numbers every time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncGenerator
from typing import ClassVar

import orjson

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
from ferryman.settings import Deployment

DEFAULT_DIMENSIONS = 8


class FakeProvider:
    """Answers in-process; `deployment.model` is echoed as the model that answered."""

    name: ClassVar[str] = "fake"
    default_api_base: ClassVar[str] = ""  # in-process: nothing to reach
    gen_ai_system: ClassVar[str] = "ferryman.fake"

    def __init__(self, deployment: Deployment, *, propagate_trace: bool = False) -> None:
        self.deployment = deployment  # in-process: there is no upstream to propagate a trace to

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """A whole deterministic answer."""
        message, finish = _answer(request)
        return ChatResponse(
            id=_response_id(request),
            model=self.deployment.model,
            message=message,
            finish_reason=finish,
            usage=_usage(request, message),
            created=int(time.time()),
        )

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """The same answer, one word per text delta; the start first, then everything else at once."""
        message, finish = _answer(request)
        yield [StreamStart(id=_response_id(request), model=self.deployment.model, created=int(time.time()))]
        words = message.text.split(" ") if message.text else []
        rest: list[StreamEvent] = [TextDelta(word if i == 0 else f" {word}") for i, word in enumerate(words)]
        for index, call in enumerate(message.tool_calls):
            rest += [
                ToolCallStart(index=index, id=call.id, name=call.name),
                ToolCallDelta(index, call.arguments),
            ]
        rest += [Finish(finish), UsageReport(_usage(request, message))]
        yield rest

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """One unit-length-ish vector per input, derived from the text's SHA-256."""
        dims = request.dimensions or DEFAULT_DIMENSIONS
        vectors = tuple(_vector(text, dims) for text in request.inputs)
        tokens = sum(_count_words(text) for text in request.inputs)
        return EmbeddingResponse(
            model=self.deployment.model, vectors=vectors, usage=Usage(input_tokens=tokens)
        )

    async def aclose(self) -> None:
        """Nothing to release."""


def _answer(request: ChatRequest) -> tuple[Message, FinishReason]:
    choice = request.tool_choice
    if request.tools and choice is not None and choice.mode == "required":
        tool = next((t for t in request.tools if t.name == choice.name), request.tools[0])
        call = ToolCall(id="call_fake_0", name=tool.name, arguments=orjson.dumps({}).decode())
        return Message(role="assistant", tool_calls=(call,)), "tool_calls"
    last_user = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
    words = f"This is Ferryman's fake provider. You said: {last_user}".split(" ")
    finish: FinishReason = "stop"
    if request.max_tokens is not None and len(words) > request.max_tokens:
        words, finish = words[: request.max_tokens], "length"
    return Message(role="assistant", parts=(TextPart(" ".join(words)),)), finish


def _usage(request: ChatRequest, answer: Message) -> Usage:
    prompt_words = sum(_count_words(m.text) for m in request.messages)
    output_words = _count_words(answer.text) + sum(_count_words(c.arguments) for c in answer.tool_calls)
    return Usage(input_tokens=prompt_words, output_tokens=output_words)


def _count_words(text: str) -> int:
    return len(text.split())


def _response_id(request: ChatRequest) -> str:
    digest = hashlib.sha256(repr(request.messages).encode()).hexdigest()[:24]
    return f"fake-{digest}"


def _vector(text: str, dims: int) -> tuple[float, ...]:
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dims:
        digest += hashlib.sha256(digest).digest()
    return tuple(round(b / 127.5 - 1.0, 6) for b in digest[:dims])
