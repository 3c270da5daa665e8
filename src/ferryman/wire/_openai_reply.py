"""Pieces every OpenAI reply shares: usage, finish reasons and timestamps, for whole replies and streams."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from ferryman.core.canonical import FinishReason, JSONObject, JSONValue, Usage
from ferryman.errors import UpstreamConnectionError
from ferryman.wire._fields import Malformed, get_opt_int, get_opt_object

PROVIDER = "openai"

_FINISH_REASONS: Mapping[str, FinishReason] = MappingProxyType(
    {
        "stop": "stop",
        "length": "length",
        "tool_calls": "tool_calls",
        "content_filter": "content_filter",
        "function_call": "tool_calls",  # the deprecated single-function form
    }
)


def upstream_error(exc: Malformed) -> UpstreamConnectionError:
    """A malformed upstream reply is the upstream's failure, not the client's."""
    return UpstreamConnectionError(f"malformed reply from OpenAI: {exc.message}", provider=PROVIDER)


def parse_finish_reason(value: JSONValue, *, has_tool_calls: bool) -> FinishReason:
    """OpenAI's finish reason as canonical; unknown or missing reasons read as "stop"."""
    reason = _FINISH_REASONS.get(value, "stop") if isinstance(value, str) else "stop"
    # OpenAI says "stop" when tool_choice forced a function; canonically the model stopped to call it.
    if reason == "stop" and has_tool_calls:
        return "tool_calls"
    return reason


def render_finish_reason(reason: FinishReason) -> str:
    """A canonical finish reason as OpenAI spells it; "error" has no equivalent and renders as "stop"."""
    return "stop" if reason == "error" else reason


def parse_usage(reply: JSONObject) -> Usage:
    """The `usage` of a reply or chunk; absent (some OpenAI-compatible servers omit it) is all zeros.

    OpenAI counts cached input inside `prompt_tokens` and reasoning inside `completion_tokens`, as the
    canonical Usage does, so the details are read as they are; so are cache writes, in
    `prompt_tokens_details.cache_write_tokens` (the OpenAI SDK's field, also what OpenRouter sends for
    the Anthropic models it fronts).
    """
    usage = get_opt_object(reply, "usage")
    if usage is None:
        return Usage()
    prompt = get_opt_object(usage, "prompt_tokens_details", "usage") or {}
    completion = get_opt_object(usage, "completion_tokens_details", "usage") or {}
    return Usage(
        input_tokens=_count(usage, "prompt_tokens", "usage"),
        output_tokens=_count(usage, "completion_tokens", "usage"),
        cached_tokens=_count(prompt, "cached_tokens", "usage.prompt_tokens_details"),
        cache_write_tokens=_count(prompt, "cache_write_tokens", "usage.prompt_tokens_details"),
        reasoning_tokens=_count(completion, "reasoning_tokens", "usage.completion_tokens_details"),
    )


def _count(obj: JSONObject, key: str, prefix: str) -> int:
    return get_opt_int(obj, key, prefix, minimum=0) or 0


def render_usage(usage: Usage) -> JSONObject:
    """Canonical usage as the `usage` object of a reply or of the closing stream chunk.

    Cache writes (from Anthropic, say) go out in `prompt_tokens_details.cache_write_tokens`, so the
    client sees what it paid for; with none the field is left out, as OpenAI itself leaves it out.
    """
    prompt_details: JSONObject = {"cached_tokens": usage.cached_tokens}
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def parse_created(reply: JSONObject) -> int:
    """The reply's `created` Unix time; 0 when absent."""
    value = reply.get("created")
    if isinstance(value, float) and math.isfinite(value):  # some compatible servers send fractions
        return int(value)
    return get_opt_int(reply, "created") or 0
