"""What a fake says in one turn: the prompt read from a request and the reply planned for it."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ferryman.testing._script import Reply, ThinkingSpec, ToolCallSpec, Usage

NEUTRAL_FINISHES = ("stop", "length", "tool_calls", "content_filter")
"""Finish reasons a script may name once for every provider; other strings go out verbatim."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """The provider-neutral facts a fake needs from one request body."""

    model: str
    stream: bool
    last_user_text: str
    word_count: int
    body: Any
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedToolCall:
    """A scripted tool call with its arguments serialised and cut into stream fragments."""

    spec: ToolCallSpec
    arguments_json: str
    pieces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Turn:
    """The reply a fake will render: text, tool calls, finish reason and usage, all decided."""

    text: str
    text_pieces: tuple[str, ...]
    tool_calls: tuple[PlannedToolCall, ...]
    finish: str
    usage: Usage
    thinking: tuple[ThinkingSpec, ...] = ()


def plan_turn(reply: Reply, prompt: Prompt) -> Turn:
    """Decide the content of `reply` for `prompt`: echo by default, words counted as tokens."""
    echo = reply.reply_text is None and not reply.calls
    text = f"echo: {prompt.last_user_text}" if echo else (reply.reply_text or "")
    calls = tuple(_plan_call(spec, reply.chunks) for spec in reply.calls)
    finish = reply.finish or ("tool_calls" if calls else "stop")
    usage = reply.usage or Usage(prompt.word_count, _output_words(text, calls))
    return Turn(text, split_evenly(text, reply.chunks), calls, finish, usage, reply.thinking)


def _plan_call(spec: ToolCallSpec, chunks: int) -> PlannedToolCall:
    arguments_json = json.dumps(dict(spec.arguments), separators=(",", ":"))
    return PlannedToolCall(spec, arguments_json, split_evenly(arguments_json, chunks))


def _output_words(text: str, calls: tuple[PlannedToolCall, ...]) -> int:
    return count_words(text) + sum(count_words(call.spec.name + " " + call.arguments_json) for call in calls)


def count_words(text: str) -> int:
    """The fakes' tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def split_evenly(text: str, pieces: int) -> tuple[str, ...]:
    """Cut `text` into at most `pieces` non-empty parts of near-equal length (none when empty)."""
    count = max(1, min(pieces, len(text)))
    bounds = [len(text) * i // count for i in range(count + 1)]
    return tuple(text[start:end] for start, end in itertools.pairwise(bounds) if end > start)


def texts_in(value: object) -> Iterator[str]:
    """Every string under a `text` or `content` key, at any depth: the words a prompt is made of."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("text", "content") and isinstance(item, str):
                yield item
            else:
                yield from texts_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts_in(item)


def prompt_words(*parts: object) -> int:
    """Count the words of every text in `parts` (a system prompt string, message lists, ...)."""
    texts = [text for part in parts for text in ([part] if isinstance(part, str) else texts_in(part))]
    return sum(count_words(text) for text in texts)


def typed_text(content: object) -> str:
    """What a user typed in one message: a plain string, or its top-level text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def last_user_text(messages: object, *, content_key: str, default_role: str | None = None) -> str:
    """The text of the last user message that has any (tool results are not typed text)."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role", default_role) == "user":
            text = typed_text(message.get(content_key))
            if text:
                return text
    return ""


def embedding_vector(text: str, dimensions: int) -> tuple[float, ...]:
    """A unit vector derived from `text` alone, so equal inputs embed equally across runs."""
    stream = b"".join(
        hashlib.sha256(f"{block}:{text}".encode()).digest() for block in range(dimensions // 8 + 1)
    )
    raw = [(byte - 127.5) / 127.5 for byte in stream[:dimensions]]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return tuple(round(value / norm, 6) for value in raw)


def float32_bytes(vector: tuple[float, ...]) -> bytes:
    """Little-endian float32, the layout OpenAI's base64 embeddings use."""
    return struct.pack(f"<{len(vector)}f", *vector)
