"""A pinned, versioned price table, so that every request's cost is known — never silently $0.

Prices are US dollars per million tokens, as the providers publish them. A deployment may override its
price in config (negotiated rates, self-hosted models); a model found in neither place is *unpriced*:
`price_for` returns None, the gateway counts it in `ai_api_unpriced_requests_total` and logs it, and
`ferryman check-config` warns about it before it ever serves traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ferryman.core.canonical import Usage

PRICE_TABLE_VERSION = "2026-11-01"


@dataclass(frozen=True, slots=True)
class Price:
    """Per-million-token prices; `cached_input` applies to the cached part of the input."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, usage: Usage) -> float:
        """The dollar cost of `usage` at this price."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        fresh = usage.input_tokens - cached
        return (fresh * self.input + cached * cached_rate + usage.output_tokens * self.output) / 1_000_000


# Upstream model id → price. Keys are the provider's own model ids (what a deployment's `model` names).
PINNED_PRICES: Mapping[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "o3": Price(2.00, 8.00, 0.50),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    # Anthropic
    "claude-opus-4-1": Price(15.00, 75.00, 1.50),
    "claude-sonnet-4-5": Price(3.00, 15.00, 0.30),
    "claude-sonnet-4-0": Price(3.00, 15.00, 0.30),
    "claude-haiku-4-5": Price(1.00, 5.00, 0.10),
    "claude-3-5-haiku-latest": Price(0.80, 4.00, 0.08),
    # Google Gemini
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, 0.025),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini-embedding-001": Price(0.15, 0.0),
}


def price_for(
    model: str, override: Price | None = None, table: Mapping[str, Price] = PINNED_PRICES
) -> Price | None:
    """The price of upstream `model`: the override if given, else the pinned entry, else None.

    Dated snapshots (`gpt-4o-2024-08-06`, `claude-sonnet-4-5-20250929`) fall back to their family's
    price by stripping the date suffix.
    """
    if override is not None:
        return override
    if model in table:
        return table[model]
    base = _strip_date_suffix(model)
    return table.get(base)


def _strip_date_suffix(model: str) -> str:
    head, _, tail = model.rpartition("-")
    if tail.isdigit() and len(tail) == 8:
        return head
    parts = model.split("-")
    if len(parts) > 3 and all(p.isdigit() for p in parts[-3:]):
        return "-".join(parts[:-3])
    return model
