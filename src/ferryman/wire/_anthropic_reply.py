"""Pieces every Anthropic reply shares, whole or streamed: stop reasons, usage and tool-use input."""

from __future__ import annotations

import json

import orjson

from ferryman.core.canonical import FinishReason, JSONObject, JSONValue, Usage
from ferryman.wire._fields import get_opt_int

PROVIDER = "anthropic"


def dump_json(value: JSONValue) -> str:
    """Compact JSON text; orjson for speed, the stdlib for what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_stop_reason(stop_reason: str | None) -> FinishReason:
    """Anthropic's stop reason as canonical; unknown reasons read as "stop"."""
    match stop_reason:
        case "max_tokens" | "model_context_window_exceeded":
            return "length"
        case "tool_use":
            return "tool_calls"
        case "refusal":
            return "content_filter"
        case _:  # end_turn, stop_sequence, pause_turn, and reasons added after this was written
            return "stop"


def render_stop_reason(reason: FinishReason) -> str:
    """A canonical finish reason as a stop reason; "stop" and "error" both render as `end_turn`."""
    match reason:
        case "length":
            return "max_tokens"
        case "tool_calls":
            return "tool_use"
        case "content_filter":
            return "refusal"
        case _:
            return "end_turn"


def parse_usage(usage: JSONObject, path: str) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens`; canonical input includes them.

    Thinking is inside Anthropic's `output_tokens` and not reported apart, so reasoning reads as 0.
    """
    cache_read = get_opt_int(usage, "cache_read_input_tokens", path) or 0
    cache_creation = get_opt_int(usage, "cache_creation_input_tokens", path) or 0
    return Usage(
        input_tokens=(get_opt_int(usage, "input_tokens", path) or 0) + cache_read + cache_creation,
        output_tokens=get_opt_int(usage, "output_tokens", path) or 0,
        cached_tokens=cache_read,
        cache_write_tokens=cache_creation,
    )


def render_usage(usage: Usage) -> JSONObject:
    """Canonical usage as Anthropic counts it: cache reads and writes apart from `input_tokens`."""
    return {
        "input_tokens": max(usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens, 0),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    }
