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
    """The `usage` of a reply or chunk; absent (some OpenAI-compatible servers omit it) is all zeros."""
    usage = get_opt_object(reply, "usage")
    if usage is None:
        return Usage()
    details = get_opt_object(usage, "prompt_tokens_details", "usage") or {}
    return Usage(
        input_tokens=get_opt_int(usage, "prompt_tokens", "usage", minimum=0) or 0,
        output_tokens=get_opt_int(usage, "completion_tokens", "usage", minimum=0) or 0,
        cached_tokens=get_opt_int(details, "cached_tokens", "usage.prompt_tokens_details", minimum=0) or 0,
    )


def render_usage(usage: Usage) -> JSONObject:
    """Canonical usage as the `usage` object of a reply or of the closing stream chunk."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def parse_created(reply: JSONObject) -> int:
    """The reply's `created` Unix time; 0 when absent."""
    value = reply.get("created")
    if isinstance(value, float) and math.isfinite(value):  # some compatible servers send fractions
        return int(value)
    return get_opt_int(reply, "created") or 0
