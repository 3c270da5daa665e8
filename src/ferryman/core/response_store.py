"""Stored Responses-API answers: the whole canonical conversation behind each `resp_…` id, per key.

The Responses API lets a client continue from an earlier answer by id (`previous_response_id`) and
read or delete it later, so the gateway keeps what it answered. It keeps canonical messages, not wire
JSON, so a conversation begun on one provider continues on any other; thinking is kept with its
signatures, so a provider that sealed it gets it back intact. Entries live in the shared `Cache`
(embedded or Redis) under the calling key's scope: another key's id reads as unknown.

The `ResponseStorage` stage does the writing, so an answer is on record before the client sees its
end, whether it was whole, streamed, or a response-cache hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import cast, get_args

import orjson

from ferryman.core.caller import Caller
from ferryman.core.canonical import (
    ChatResponse,
    FinishReason,
    ImagePart,
    JSONObject,
    JSONValue,
    Message,
    Part,
    Role,
    TextPart,
    ThinkingPart,
    ToolCall,
    Usage,
)
from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Answer, Outcome
from ferryman.core.shared_state import Cache

NOTE = "responses"
"""The `Exchange.notes` key under which the Responses ingress leaves its `ResponsesNote`."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One answer and the conversation it ended; `input_count` of `messages` were the input.

    `echo` holds the request fields a Responses object repeats back (tools, metadata …), as sent.
    """

    id: str
    created_at: int
    messages: tuple[Message, ...]
    input_count: int
    finish_reason: FinishReason
    usage: Usage
    model: str
    echo: JSONObject = field(default_factory=dict)

    @property
    def answer(self) -> ChatResponse:
        """The answer as the canonical response it was."""
        return ChatResponse(
            self.id, self.model, self.messages[-1], self.finish_reason, self.usage, self.created_at
        )


@dataclass(slots=True)
class ResponsesNote:
    """What the Responses ingress tells the storage stage about one request.

    A stream's assembled answer carries no thinking, so the stream renderer collects it in `thinking`
    as it passes.
    """

    response_id: str
    created_at: int
    store: bool
    input_messages: tuple[Message, ...]
    echo: JSONObject
    thinking: list[ThinkingPart] = field(default_factory=list)


def caller_scope(caller: Caller) -> str:
    """The key a stored response belongs to (a static key has an alias but no id)."""
    return caller.key_id or caller.key_alias


class ResponseStore:
    """Stored responses in a `Cache`, each under its key's scope, kept for `ttl` seconds."""

    def __init__(self, cache: Cache, ttl: float) -> None:
        self._cache = cache
        self._ttl = ttl

    async def save(self, scope: str, stored: StoredResponse) -> None:
        """Keep `stored` for the key `scope`."""
        await self._cache.set(_entry_key(scope, stored.id), orjson.dumps(_encode(stored)), self._ttl)

    async def load(self, scope: str, response_id: str) -> StoredResponse | None:
        """The stored response, or None when it is unknown, expired, or another key's."""
        raw = await self._cache.get(_entry_key(scope, response_id))
        return None if raw is None else _decode(orjson.loads(raw))

    async def delete(self, scope: str, response_id: str) -> bool:
        """Forget a response; False when there was none to forget."""
        key = _entry_key(scope, response_id)
        if await self._cache.get(key) is None:
            return False
        await self._cache.delete(key)
        return True


class ResponseStorage:
    """The pipeline stage that stores each answer a Responses request asked to have stored."""

    name = "response_storage"

    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Ask for a stream's answer assembled, when it is to be stored."""
        note = _note(exchange)
        if note is not None and note.store and exchange.stream:
            exchange.assemble_stream = True
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Store the answer with the conversation it ends."""
        note = _note(exchange)
        answer = outcome.response
        if note is None or not note.store or not isinstance(answer, ChatResponse):
            return
        message = answer.message
        if not message.thinking and note.thinking:
            message = replace(message, thinking=tuple(note.thinking))
        stored = StoredResponse(
            id=note.response_id,
            created_at=note.created_at,
            messages=(*note.input_messages, message),
            input_count=len(note.input_messages),
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            model=exchange.model,
            echo=note.echo,
        )
        await self._store.save(caller_scope(exchange.caller), stored)


def _note(exchange: Exchange) -> ResponsesNote | None:
    note = exchange.notes.get(NOTE)
    return note if isinstance(note, ResponsesNote) else None


def _entry_key(scope: str, response_id: str) -> str:
    return f"responses:{scope}:{response_id}"


# --- Encoding: our own JSON, read back only by this module -----------------------------------------


def _encode(stored: StoredResponse) -> JSONObject:
    usage = stored.usage
    return {
        "id": stored.id,
        "created_at": stored.created_at,
        "messages": [_encode_message(m) for m in stored.messages],
        "input_count": stored.input_count,
        "finish_reason": stored.finish_reason,
        "usage": [
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.reasoning_tokens,
        ],
        "model": stored.model,
        "echo": stored.echo,
    }


def _encode_message(message: Message) -> JSONObject:
    parts: list[JSONValue] = [
        {"text": p.text} if isinstance(p, TextPart) else {"image": p.url, "detail": p.detail}
        for p in message.parts
    ]
    return {
        "role": message.role,
        "parts": parts,
        "tool_calls": [[c.id, c.name, c.arguments] for c in message.tool_calls],
        "tool_call_id": message.tool_call_id,
        "name": message.name,
        "is_error": message.is_error,
        "thinking": [[t.text, t.signature, t.redacted_data] for t in message.thinking],
    }


def _decode(raw: dict[str, object]) -> StoredResponse:
    usage = cast("list[int]", raw["usage"])
    reason = cast("FinishReason", raw["finish_reason"])
    return StoredResponse(
        id=cast("str", raw["id"]),
        created_at=cast("int", raw["created_at"]),
        messages=tuple(_decode_message(m) for m in cast("list[dict[str, object]]", raw["messages"])),
        input_count=cast("int", raw["input_count"]),
        finish_reason=reason if reason in get_args(FinishReason) else "stop",
        usage=Usage(*usage),
        model=cast("str", raw["model"]),
        echo=cast("JSONObject", raw["echo"]),
    )


def _decode_message(raw: dict[str, object]) -> Message:
    parts: list[Part] = []
    for part in cast("list[dict[str, str | None]]", raw["parts"]):
        text, image = part.get("text"), part.get("image")
        parts.append(TextPart(text) if text is not None else ImagePart(image or "", part.get("detail")))
    calls = cast("list[list[str]]", raw["tool_calls"])
    thinking = cast("list[list[str | None]]", raw["thinking"])
    return Message(
        role=cast("Role", raw["role"]),
        parts=tuple(parts),
        tool_calls=tuple(ToolCall(*call) for call in calls),
        tool_call_id=cast("str | None", raw["tool_call_id"]),
        name=cast("str | None", raw["name"]),
        is_error=bool(raw["is_error"]),
        thinking=tuple(ThinkingPart(t[0] or "", t[1], t[2]) for t in thinking),
    )
