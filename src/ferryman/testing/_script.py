"""The reply script shared by every fake provider: what the next request will get."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "Drop",
    "Fault",
    "HttpError",
    "Malformed",
    "NotJson",
    "Reply",
    "Script",
    "ThinkingSpec",
    "ToolCallSpec",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts a fake reports, so cost and budget tests can pin exact numbers.

    `cached_tokens` and `cache_write_tokens` are parts of `input_tokens`; `reasoning_tokens` is part of
    `output_tokens`. Each fake splits them the way its provider does (Anthropic reports uncached input
    apart from cache reads and writes; Gemini reports thinking apart from the candidates).
    """

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output, as every provider's `total` field counts them."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    """One function call the model makes; `id` is invented in the provider's style when not given."""

    name: str
    arguments: Mapping[str, object] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ThinkingSpec:
    """One block of visible reasoning the model shows before its answer, with the seal it is sent
    back with (`signature`); with `redacted_data`, a redacted block (no text, only that data)."""

    text: str = ""
    signature: str = "sig-fake"
    redacted_data: str | None = None


@dataclass(frozen=True, slots=True)
class HttpError:
    """Answer with an HTTP error status in the provider's error shape (or mid-stream, see `after_chunks`)."""

    status: int
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: object = None
    after_chunks: int | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection: before any response when `after_chunks` is None, else part-way through."""

    after_chunks: int | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """Send invalid JSON: a broken SSE data line after `after_chunks` good ones, or a truncated body."""

    after_chunks: int = 0


@dataclass(frozen=True, slots=True)
class NotJson:
    """Answer with a body that is not JSON at all (a proxy's HTML page, say), by default with status 200."""

    body: str
    content_type: str = "text/html"
    status: int = 200


Fault = HttpError | Drop | Malformed | NotJson
"""Every way a scripted reply can misbehave."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What a fake answers to one model call: content, timing and an optional fault.

    Build one with the class methods (`Reply.text`, `Reply.tool_calls`, `Reply.error`, `Reply.drop`,
    `Reply.malformed`, `Reply.not_json`, `Reply.echo`) rather than the constructor. A reply with no
    `reply_text` and no `calls` echoes the last user message.
    """

    reply_text: str | None = None
    calls: tuple[ToolCallSpec, ...] = ()
    chunks: int = 1
    finish: str | None = None
    usage: Usage | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    fault: Fault | None = None
    thinking: tuple[ThinkingSpec, ...] = ()  # rendered by the fakes whose provider shows reasoning

    @classmethod
    def echo(cls, *, chunks: int = 1, delay: float = 0.0, chunk_delay: float = 0.0) -> Reply:
        """The default reply, `"echo: <last user text>"`, with its timing adjustable."""
        return cls(chunks=chunks, delay=delay, chunk_delay=chunk_delay)

    @classmethod
    def text(
        cls,
        text: str,
        *,
        chunks: int = 1,
        finish: str | None = None,
        usage: Usage | None = None,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        thinking: tuple[ThinkingSpec, ...] = (),
    ) -> Reply:
        """Answer `text`, streamed as `chunks` deltas, ending with `finish` (default `"stop"`);
        `thinking` comes first (its text streamed in `chunks` deltas too)."""
        return cls(text, (), chunks, finish, usage, delay, chunk_delay, thinking=thinking)

    @classmethod
    def tool_calls(
        cls,
        *calls: ToolCallSpec,
        text: str | None = None,
        chunks: int = 3,
        finish: str | None = None,
        usage: Usage | None = None,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        thinking: tuple[ThinkingSpec, ...] = (),
    ) -> Reply:
        """Call one or several tools in parallel, optionally after some `thinking` and `text`.

        When streamed, each call's JSON arguments arrive in `chunks` fragments where the provider
        fragments them (OpenAI, Anthropic); Gemini sends each call whole.
        """
        if not calls:
            raise ValueError("Reply.tool_calls needs at least one ToolCallSpec")
        return cls(text, tuple(calls), chunks, finish, usage, delay, chunk_delay, thinking=thinking)

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: object = None,
        after_chunks: int | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """Fail with `status` in the provider's error shape; `body` replaces that shape verbatim.

        With `after_chunks`, a streamed request first gets that many events of the echo reply (cut in
        four), then the provider's in-stream error event; a non-streamed request gets the HTTP error.
        """
        fault = HttpError(
            status, message, error_type, code, tuple((headers or {}).items()), body, after_chunks
        )
        return cls(chunks=4, delay=delay, fault=fault)

    @classmethod
    def drop(
        cls,
        after_chunks: int | None = None,
        *,
        text: str | None = None,
        chunks: int = 4,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
    ) -> Reply:
        """Drop the connection: with no response at all, or after `after_chunks` stream events.

        A non-streamed request with `after_chunks` set gets its headers and half its body. The stream
        is always cut before its end, even when it has fewer events than `after_chunks`.
        """
        return cls(text, (), chunks, None, None, delay, chunk_delay, Drop(after_chunks))

    @classmethod
    def malformed(cls, after_chunks: int = 0, *, text: str | None = None, chunks: int = 4) -> Reply:
        """Put invalid JSON in the stream after `after_chunks` good events (or truncate a JSON body)."""
        return cls(text, (), chunks, fault=Malformed(after_chunks))

    @classmethod
    def not_json(
        cls,
        body: str = "<html><body><h1>502 Bad Gateway</h1></body></html>",
        *,
        content_type: str = "text/html",
        status: int = 200,
    ) -> Reply:
        """Answer with a non-JSON body, as a misconfigured proxy in front of the provider would."""
        return cls(fault=NotJson(body, content_type, status))


class Script:
    """A thread-safe queue of replies, consumed one per model call, then back to the default.

    Tests queue replies from their own thread while the fake's server thread takes them, so every
    access goes through one lock. Listing endpoints (`GET .../models`) never consume a reply.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._default = Reply()

    def reply(self, *replies: Reply, times: int = 1) -> None:
        """Queue `replies` in order, the whole sequence `times` times (e.g. two 503s before success)."""
        with self._lock:
            self._queue.extend(replies * times)

    def set_default(self, reply: Reply | None) -> None:
        """Answer with `reply` whenever the queue is empty; None restores the echo."""
        with self._lock:
            self._default = reply if reply is not None else Reply()

    def clear(self) -> None:
        """Forget every queued reply and restore the echo default."""
        with self._lock:
            self._queue.clear()
            self._default = Reply()

    @property
    def pending(self) -> int:
        """How many queued replies are still waiting for a request."""
        with self._lock:
            return len(self._queue)

    def take(self) -> Reply:
        """Hand out the next queued reply, or the default when none is queued (used by the fakes)."""
        with self._lock:
            return self._queue.popleft() if self._queue else self._default
