"""The response cache as a pipeline stage: an exact repeat of a deterministic request is answered from
the cache, at no cost and without calling an upstream.

    enter: cacheable? ──no──▶ x-ferryman-cache: bypass
              │yes
           lookup ──hit──▶ the stored answer (cost $0; later stages and the upstream are skipped)
              │miss
           x-ferryman-cache: miss ──▶ … upstream …  ──▶ exit: store the answer if it is whole and sound

The key (`core/cache_key.py`) is scoped: `key` (the default) keeps each calling key's answers to itself,
`team` shares them among a team's keys (a key without a team keeps its own), `global` shares them with
every caller. A request is cacheable when its model's policy caches it and it is deterministic enough:
temperature 0 — an unset temperature is the provider's default (1 for OpenAI), so it is sampled and
not cached — unless the policy caches sampled answers too. The client's `Cache-Control: no-cache`
skips the lookup but stores the fresh answer; `no-store` does neither.

Only complete answers are stored: answered without error, finished for `stop`, `length` or
`tool_calls`, with usage the provider reported (not estimated). A stream's answer reaches `exit`
assembled from its events: on a miss the stage sets `exchange.assemble_stream`, and the pipeline's
`AnswerStream` then keeps the events it relays and hands `exit` the whole answer they add up to — the
inverse of the replay that serves a hit as a stream. So a stream can be answered from a whole answer,
and the other way round, in any ingress format.

A hit costs nothing: `exchange.cost` is 0 (the budgets settle their hold at $0), `exchange.usage` stays
empty (the rate limits settle their token estimate to 0; no upstream tokens were spent), and the
answer keeps the usage it was stored with, which the client sees. The stage appends the hit to the spend
ledger itself — the ledger stage, after it, is skipped like every later stage — as provider and
deployment `cache` at $0.00 with the stored token counts. The shared cache failing (Redis down) makes
a lookup a miss and a store a no-op: the cache never fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias, cast, get_args

import orjson

from ferryman.core.cache_key import cache_key
from ferryman.core.caller import Caller
from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    TextPart,
    ToolCall,
    Usage,
)
from ferryman.core.exchange import Exchange
from ferryman.core.ledger import spend_entry
from ferryman.core.shared_state import Cache, Ledger
from ferryman.errors import SharedStateUnavailableError

if TYPE_CHECKING:
    from ferryman.core.pipeline import Answer, Outcome

log = logging.getLogger("ferryman.response_cache")
Scope: TypeAlias = Literal["key", "team", "global"]
HEADER = "x-ferryman-cache"
CACHE_PROVIDER = "cache"  # the provider and deployment a hit is recorded as, in the ledger and headers
STORED_FINISHES: frozenset[str] = frozenset({"stop", "length", "tool_calls"})
_FINISHES: frozenset[str] = frozenset(get_args(FinishReason))
ENTRY_VERSION = 1


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How one model's answers are cached: kept `ttl` seconds; `nonzero_temperature` also caches
    requests whose temperature is above 0 or unset (sampled answers)."""

    ttl: float
    nonzero_temperature: bool = False


@dataclass(frozen=True, slots=True)
class _Store:
    """A lookup that missed (or was skipped by `no-cache`): the answer goes under `key` on exit."""

    key: str
    ttl: float


@dataclass(frozen=True, slots=True)
class _Hit:
    """A request answered from the cache, with the usage its answer carries, for the ledger."""

    usage: Usage


class ResponseCache:
    """The stage; see the module docstring."""

    name = "response_cache"

    def __init__(
        self,
        store: Cache,
        policies: Mapping[str, CachePolicy],
        *,
        scope: Scope = "key",
        ledger: Ledger | None = None,
    ) -> None:
        """`policies` names each cached model (a model without one is never cached); `ledger` records
        hits (None: hits leave no entry)."""
        self._store = store
        self._policies = dict(policies)
        self._scope = scope
        self._ledger = ledger

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Answer a cached request, or note where its answer will be stored."""
        request = exchange.request
        policy = self._policies.get(exchange.model)
        if policy is None or not isinstance(request, ChatRequest) or exchange.operation != "chat":
            return None  # not a chat answer (a token count holds a chat request too)
        directives = cache_directives(exchange.cache_control)
        if "no-store" in directives or not cacheable(request, policy):
            _verdict(exchange, "bypass")
            return None
        key = cache_key(self.scope_of(exchange.caller), request)
        if "no-cache" in directives:
            _verdict(exchange, "bypass")
        else:
            cached = await self._lookup(key)
            if cached is not None:
                return _answer_with(exchange, *cached)
            _verdict(exchange, "miss")
        exchange.notes[self.name] = _Store(key, policy.ttl)
        exchange.assemble_stream = True
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Store a fresh, complete answer; record a hit in the ledger."""
        note = exchange.notes.pop(self.name, None)
        if isinstance(note, _Hit):
            await self._record_hit(exchange, note.usage)
        elif isinstance(note, _Store):
            response = outcome.response
            if isinstance(response, ChatResponse) and _storable(exchange, outcome.kind, response):
                await self._save(note, encode_entry(response, exchange.served_model or exchange.model))

    def scope_of(self, caller: Caller) -> str:
        """The part of the key that says who may share an entry."""
        if self._scope == "global":
            return "global"
        if self._scope == "team" and caller.team_id is not None:
            return f"team:{caller.team_id}"
        return f"key:{caller.key_id}" if caller.key_id is not None else f"alias:{caller.key_alias}"

    async def _lookup(self, key: str) -> tuple[ChatResponse, str] | None:
        try:
            raw = await self._store.get(key)
        except SharedStateUnavailableError as exc:
            log.warning("response cache unreachable: lookup counted as a miss (%s)", exc)
            return None
        return decode_entry(raw) if raw is not None else None

    async def _save(self, note: _Store, entry: bytes) -> None:
        try:
            await self._store.set(note.key, entry, note.ttl)
        except SharedStateUnavailableError as exc:
            log.warning("response cache unreachable: answer not stored (%s)", exc)

    async def _record_hit(self, exchange: Exchange, usage: Usage) -> None:
        if self._ledger is None:
            return
        await self._ledger.append(spend_entry(exchange, usage, CACHE_PROVIDER, CACHE_PROVIDER, 0.0))


def cacheable(request: ChatRequest, policy: CachePolicy) -> bool:
    """Whether `policy` caches `request`: temperature 0, or any temperature when it caches sampling."""
    return policy.nonzero_temperature or request.temperature == 0


def cache_directives(header: str) -> frozenset[str]:
    """The directive names of a `Cache-Control` value, lower-cased (`no-cache`, `no-store`, …)."""
    if not header:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in header.split(","))


def encode_entry(response: ChatResponse, served_model: str) -> bytes:
    """An answer as the cache stores it: one compact JSON array."""
    usage = response.usage
    return orjson.dumps(
        [
            ENTRY_VERSION,
            response.id,
            response.model,
            response.created,
            served_model,
            response.message.text,
            [[call.id, call.name, call.arguments] for call in response.message.tool_calls],
            response.finish_reason,
            [
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                usage.cache_write_tokens,
                usage.reasoning_tokens,
            ],
        ]
    )


def decode_entry(raw: bytes) -> tuple[ChatResponse, str] | None:
    """`(answer, model that served it)` from a stored entry; None for one this version cannot read (an
    older format, a corrupt value): it counts as a miss and is overwritten."""
    try:
        version, id_, model, created, served, text, calls, finish, counts = orjson.loads(raw)
        if version != ENTRY_VERSION or finish not in _FINISHES:
            return None
        message = Message(
            "assistant",
            (TextPart(str(text)),) if text else (),
            tuple(ToolCall(str(call_id), str(name), str(args)) for call_id, name, args in calls),
        )
        usage = Usage(*(int(count) for count in counts))
        reason = cast(FinishReason, finish)
        return ChatResponse(str(id_), str(model), message, reason, usage, int(created)), str(served)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        log.warning("response cache entry unreadable: counted as a miss")
        return None


def _answer_with(exchange: Exchange, response: ChatResponse, served_model: str) -> ChatResponse:
    """Account for a hit on `exchange` (free, served by the cache) and return its answer."""
    _verdict(exchange, "hit")
    exchange.cost = 0.0
    exchange.provider = exchange.deployment = CACHE_PROVIDER
    exchange.served_model = served_model
    exchange.notes[ResponseCache.name] = _Hit(response.usage)
    return response


def _storable(exchange: Exchange, kind: str, response: ChatResponse) -> bool:
    return (
        kind == "answered"
        and exchange.answered_by == "upstream"
        and not exchange.usage_estimated
        and response.finish_reason in STORED_FINISHES
    )


def _verdict(exchange: Exchange, result: Literal["hit", "miss", "bypass"]) -> None:
    exchange.cache_result = result
    exchange.headers[HEADER] = result
