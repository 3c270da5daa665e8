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
"""

from __future__ import annotations

from typing import Protocol

import orjson

from ferryman.core.canonical import ChatRequest, EmbeddingRequest, ImagePart, Message, TextPart, Tool

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators, as chat formats frame each message

FRAME_TOKENS_PER_MESSAGE = 3  # the start, separator and end markers around each message's role and text
FRAME_TOKENS_PER_NAME = 1
FRAME_TOKENS_FOR_REPLY = 3  # the reply is primed with a start marker, its role and a separator


class TokenCounter(Protocol):
    """One model family's tokenizer, as far as an estimate needs it."""

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
