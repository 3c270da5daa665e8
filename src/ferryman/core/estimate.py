"""A prompt's token count before any provider has counted it: for limits and reservations up front.

The figure only has to be close and never zero: rate limits reserve it and settle to the provider's
own count afterwards, so an error in either direction lasts one request. Budgets reserve it too, and
there an undercount lets a request overspend, so with a real tokenizer the count is exact for OpenAI
models and errs high for the rest (see `ferryman.tokenizers`, which provides the `TokenCounter`s).

Without a counter the rule is characters: four a token, the usual English rule, and each message adds
the few tokens of framing providers count too. With one, the rule is OpenAI's published chat framing
(the openai-cookbook's "How to count tokens with tiktoken"): 3 tokens per message plus its role, 1 more
for a `name`, and 3 priming the reply; tool calls, tool definitions and a response schema are counted as
the text the model reads, and each image at the counter's per-image figure.

The stages ask through one `InputEstimates` per app, which picks each deployment's counter and keeps a
request's counts in its `Exchange`: rate limits, budgets and deployment quotas all want the figure, and a
long prompt costs about a millisecond to encode, so it is encoded once per request and counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import orjson

from ferryman.core.canonical import ChatRequest, EmbeddingRequest, ImagePart, Message, TextPart, Tool
from ferryman.core.exchange import Exchange

if TYPE_CHECKING:  # only the attribute names are read; routing needs nothing from here
    from ferryman.core.routing import Target

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators, as chat formats frame each message

FRAME_TOKENS_PER_MESSAGE = 3  # the start, separator and end markers around each message's role and text
FRAME_TOKENS_PER_NAME = 1
FRAME_TOKENS_FOR_REPLY = 3  # the reply is primed with a start marker, its role and a separator


class TokenCounter(Protocol):
    """One model family's tokenizer, as far as an estimate needs it.

    Counters key a request's remembered counts (`InputEstimates`), so they must be hashable, and two
    that compare equal must count alike.
    """

    def count_text(self, text: str) -> int:
        """The tokens `text` encodes to, special-token markup counted as the ordinary text it is."""
        ...

    def count_image(self, image: ImagePart) -> int:
        """The tokens one image is billed at, from a fixed figure: estimates never decode images."""
        ...


class TokenCounters(Protocol):
    """Chooses the counter for a deployment; stages are given one and ask it per provider and model."""

    def for_model(self, provider: str, model: str) -> TokenCounter:
        """The counter for `model` as `provider` serves it (never fails: unknown models err high)."""
        ...


class InputEstimates:
    """Each deployment's input estimate for a request, counted at most once per request and counter.

    Without `counters` every deployment gets the characters rule, as before tokenizers existed (and
    as the core's own tests expect). Counters that count alike compare equal (the gateway's are frozen
    dataclasses over a shared encoding), so two models on one encoding share one count as well.
    """

    NOTE = "input_estimates"  # the `exchange.notes` entry holding a request's counts, by counter

    def __init__(self, counters: TokenCounters | None = None) -> None:
        self._counters = counters
        self._by_model: dict[tuple[str, str], TokenCounter] = {}  # as many as deployments are configured

    def for_target(self, exchange: Exchange, target: Target) -> int:
        """The input tokens `target` (its provider and upstream model) will probably bill for."""
        return self._count(exchange, self.counter(target.provider, target.upstream_model))

    def most(self, exchange: Exchange, targets: Iterable[Target]) -> int:
        """The highest estimate over `targets`, for a reservation made before a deployment is chosen
        (the characters rule when there are none to ask)."""
        return max((self.for_target(exchange, target) for target in targets), default=None) or (
            self._count(exchange, None)
        )

    def counter(self, provider: str, model: str) -> TokenCounter | None:
        """The counter for `model` as `provider` serves it, chosen once (None: the characters rule)."""
        if self._counters is None:
            return None
        counter = self._by_model.get((provider, model))
        if counter is None:
            counter = self._by_model[provider, model] = self._counters.for_model(provider, model)
        return counter

    def _count(self, exchange: Exchange, counter: TokenCounter | None) -> int:
        """`estimate_input_tokens` by `counter`, remembered in the exchange for the other stages."""
        counts = exchange.notes.get(self.NOTE)
        if not isinstance(counts, dict):
            counts = exchange.notes[self.NOTE] = {}
        if counter not in counts:
            assert exchange.request is not None  # noqa: S101 - stages run on admitted requests only
            counts[counter] = estimate_input_tokens(exchange.request, counter)
        count: int = counts[counter]
        return count


def estimate_input_tokens(
    request: ChatRequest | EmbeddingRequest, counter: TokenCounter | None = None
) -> int:
    """The input tokens `request` will probably be billed for (at least 1): by `counter` when given,
    else by the characters rule."""
    if counter is None:
        return _by_characters(request)
    if isinstance(request, EmbeddingRequest):
        return max(sum(counter.count_text(text) for text in request.inputs), 1)
    tokens = FRAME_TOKENS_FOR_REPLY + sum(_message_tokens(message, counter) for message in request.messages)
    tokens += sum(counter.count_text(_tool_text(tool)) for tool in request.tools)
    if request.response_format is not None and request.response_format.schema is not None:
        tokens += counter.count_text(orjson.dumps(request.response_format.schema).decode())
    return max(tokens, 1)


def _message_tokens(message: Message, counter: TokenCounter) -> int:
    tokens = FRAME_TOKENS_PER_MESSAGE + counter.count_text(message.role)
    for part in message.parts:
        tokens += counter.count_text(part.text) if isinstance(part, TextPart) else counter.count_image(part)
    for call in message.tool_calls:
        tokens += counter.count_text(call.name) + counter.count_text(call.arguments)
    if message.name:
        tokens += counter.count_text(message.name) + FRAME_TOKENS_PER_NAME
    return tokens


def _tool_text(tool: Tool) -> str:
    """A tool definition as JSON: OpenAI renders it more tersely (TypeScript-like), so this errs high."""
    return orjson.dumps(
        {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    ).decode()


def _by_characters(request: ChatRequest | EmbeddingRequest) -> int:
    if isinstance(request, EmbeddingRequest):
        return max(sum(len(text) for text in request.inputs) // CHARS_PER_TOKEN, 1)
    chars = sum(
        len(message.text) + sum(len(c.arguments) for c in message.tool_calls) for message in request.messages
    )
    chars += sum(len(tool.name) + len(tool.description or "") for tool in request.tools)
    chars += sum(len(orjson.dumps(tool.parameters)) for tool in request.tools if tool.parameters)
    framing = TOKENS_PER_MESSAGE * len(request.messages)
    return max(chars // CHARS_PER_TOKEN + framing, 1)
