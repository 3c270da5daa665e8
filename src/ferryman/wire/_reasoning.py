"""Reasoning settings as OpenAI and Gemini spell them, read and written through one vocabulary.

The effort levels and the effort <-> budget table live in `core/canonical.py` (`EFFORT_BUDGETS`, used
by `Reasoning.budget()` and `Reasoning.level()`); this module only spells them for each wire format,
so that a level means the same whether it came as OpenAI's `reasoning_effort`, the Responses API's
`reasoning.effort` or Gemini's `thinkingLevel`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ferryman.core.canonical import Reasoning, ReasoningEffort
from ferryman.wire._fields import Malformed

EFFORTS: Final[tuple[ReasoningEffort, ...]] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

_EFFORT_NAMES: Final = "none, minimal, low, medium, high, xhigh or max"

# OpenAI's reasoning models: the o-series, gpt-5 and later, and the open-weight gpt-oss. Others (gpt-4o,
# gpt-4.1) refuse `reasoning_effort` with a 400, so it is only sent to these.
_OPENAI_REASONING_MODEL = re.compile(r"(?:^|[/_.:-])(?:o[1-9]|gpt-(?:[5-9]|\d\d)|gpt-oss)(?:$|[/_.:-])")

# Gemini 3's levels; it cannot switch thinking off ("none" asks for the least) nor go past XHIGH.
_GEMINI_LEVELS: Final[Mapping[ReasoningEffort, str]] = MappingProxyType(
    {
        "none": "MINIMAL",
        "minimal": "MINIMAL",
        "low": "LOW",
        "medium": "MEDIUM",
        "high": "HIGH",
        "xhigh": "XHIGH",
        "max": "XHIGH",
    }
)
_FROM_GEMINI_LEVEL: Final[Mapping[str, ReasoningEffort]] = MappingProxyType(
    {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high", "XHIGH": "xhigh"}
)


def parse_effort(value: object, param: str) -> ReasoningEffort | None:
    """An OpenAI effort level (`reasoning_effort`, `reasoning.effort`); None when absent or null."""
    if value is None:
        return None
    for level in EFFORTS:
        if value == level:
            return level
    raise Malformed(param, f"must be {_EFFORT_NAMES}")


def openai_effort(reasoning: Reasoning | None, model: str) -> ReasoningEffort | None:
    """The `reasoning_effort` to send upstream model `model`, or None to leave it out.

    Left out for models that are not reasoning models (they refuse the field), and when thinking is
    off by a budget of 0 (another format's "off"): models before gpt-5.1 refuse "none", so only a
    client that named "none" itself gets it sent.
    """
    if reasoning is None or not _OPENAI_REASONING_MODEL.search(model):
        return None
    if not reasoning.enabled and reasoning.effort != "none":
        return None
    return reasoning.level()


def parse_gemini_level(value: object, param: str) -> ReasoningEffort | None:
    """Gemini's `thinkingLevel` (any case, as proto JSON enums are read); None when unspecified."""
    if value is None:
        return None
    if isinstance(value, str):
        name = value.upper()
        if name == "THINKING_LEVEL_UNSPECIFIED":
            return None
        if name in _FROM_GEMINI_LEVEL:
            return _FROM_GEMINI_LEVEL[name]
    raise Malformed(param, "must be MINIMAL, LOW, MEDIUM, HIGH or XHIGH")


def gemini_level(reasoning: Reasoning) -> str:
    """The `thinkingLevel` for Gemini 3 and later: the canonical level in Gemini's five."""
    return _GEMINI_LEVELS[reasoning.level()]


def gemini_budget(reasoning: Reasoning) -> int:
    """The `thinkingBudget` for Gemini 2.5: the client's budget or its level's, 0 for none, and -1
    (the model decides) when the client named neither a level nor a budget."""
    if reasoning.effort is None and reasoning.budget_tokens is None:
        return -1
    return reasoning.budget()
