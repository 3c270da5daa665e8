"""A prompt's token count before any provider has counted it: for limits and reservations up front.

The figure only has to be close and never zero: rate limits reserve it and settle to the provider's
own count afterwards, so an error in either direction lasts one request. Four characters a token is
the usual English rule; each message and tool adds the few tokens of framing providers count too.
"""

from __future__ import annotations

import orjson

from ferryman.core.canonical import ChatRequest, EmbeddingRequest

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators, as chat formats frame each message


def estimate_input_tokens(request: ChatRequest | EmbeddingRequest) -> int:
    """The input tokens `request` will probably be billed for (at least 1)."""
    if isinstance(request, EmbeddingRequest):
        return max(sum(len(text) for text in request.inputs) // CHARS_PER_TOKEN, 1)
    chars = sum(
        len(message.text) + sum(len(c.arguments) for c in message.tool_calls) for message in request.messages
    )
    chars += sum(len(tool.name) + len(tool.description or "") for tool in request.tools)
    chars += sum(len(orjson.dumps(tool.parameters)) for tool in request.tools if tool.parameters)
    framing = TOKENS_PER_MESSAGE * len(request.messages)
    return max(chars // CHARS_PER_TOKEN + framing, 1)
