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

PRICE_TABLE_VERSION = "2026-12-01"


@dataclass(frozen=True, slots=True)
class Price:
    """One model's per-million-token prices, and the longest answer it can write.

    `cached_input` is the rate for input read from a prompt cache, `cache_write` the rate for input
    written to one (Anthropic bills writes above the input rate); either left None bills at the input
    rate, which is exact for providers that report no such tokens. `max_output_tokens` is the model's
    output limit: the budget layer reserves for it when a client sets no `max_tokens`, so that a
    reservation is never smaller than what the request may spend.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    max_output_tokens: int | None = None

    def cost(self, usage: Usage) -> float:
        """The dollar cost of `usage`: each kind of input at its own rate, all output at the output rate.

        Reasoning tokens are already inside `output_tokens` and bill at the output rate, as every
        provider bills them. Cache counts are clamped to the input they are part of, so a malformed
        usage can never make the fresh input negative.
        """
        cached = min(usage.cached_tokens, usage.input_tokens)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        fresh = usage.input_tokens - cached - written
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write is None else self.cache_write
        dollars_per_mtok = (
            fresh * self.input
            + cached * cached_rate
            + written * write_rate
            + usage.output_tokens * self.output
        )
        return dollars_per_mtok / 1_000_000


# Upstream model id → price. Keys are the provider's own model ids (what a deployment's `model` names).
#
# Figures are the providers' standard (not batch, not priority) rates as published on their pricing
# pages, read for this version; max output tokens are from each model's own page. What one Price cannot
# express is billed at the base tier and said here rather than approximated:
# - Anthropic bills 1-hour cache writes at 2x input; `cache_write` is the 5-minute rate (1.25x input),
#   the default TTL. Cache reads are 0.1x input. Long-context (>200K input) premiums are not modelled.
# - Gemini 2.5 Pro bills prompts over 200K tokens at $2.50 in / $15.00 out / $0.25 cached; the table has
#   the <=200K tier. Gemini audio input and cache storage (per token-hour) are priced apart and not here.
# - OpenAI and Gemini publish no cache-write charge (their usage reports no writes): `cache_write` is None.
# - Embedding models write no output tokens, so they have no output price and no `max_output_tokens`.
PINNED_PRICES: Mapping[str, Price] = {
    # OpenAI — developers.openai.com/api/docs/pricing; limits from each model's page.
    "gpt-4o": Price(2.50, 10.00, cached_input=1.25, max_output_tokens=16_384),
    "gpt-4o-mini": Price(0.15, 0.60, cached_input=0.075, max_output_tokens=16_384),
    "gpt-4.1": Price(2.00, 8.00, cached_input=0.50, max_output_tokens=32_768),
    "gpt-4.1-mini": Price(0.40, 1.60, cached_input=0.10, max_output_tokens=32_768),
    "gpt-4.1-nano": Price(0.10, 0.40, cached_input=0.025, max_output_tokens=32_768),
    "gpt-5": Price(1.25, 10.00, cached_input=0.125, max_output_tokens=128_000),
    "gpt-5-mini": Price(0.25, 2.00, cached_input=0.025, max_output_tokens=128_000),
    "gpt-5-nano": Price(0.05, 0.40, cached_input=0.005, max_output_tokens=128_000),
    "o3": Price(2.00, 8.00, cached_input=0.50, max_output_tokens=100_000),
    "o4-mini": Price(1.10, 4.40, cached_input=0.275, max_output_tokens=100_000),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    # Anthropic — platform.claude.com/docs/en/about-claude/pricing (input, 5m cache write, cache hit,
    # output); limits from the models overview. Opus 4.1 and Haiku 3.5 are retired on the Claude API
    # (still served by Bedrock and Google Cloud); Sonnet 4.5 is deprecated. Kept so existing deployments
    # stay priced.
    "claude-opus-4-1": Price(15.00, 75.00, cached_input=1.50, cache_write=18.75, max_output_tokens=32_000),
    "claude-sonnet-4-5": Price(3.00, 15.00, cached_input=0.30, cache_write=3.75, max_output_tokens=64_000),
    "claude-sonnet-4-0": Price(3.00, 15.00, cached_input=0.30, cache_write=3.75, max_output_tokens=64_000),
    "claude-haiku-4-5": Price(1.00, 5.00, cached_input=0.10, cache_write=1.25, max_output_tokens=64_000),
    "claude-3-5-haiku-latest": Price(
        0.80, 4.00, cached_input=0.08, cache_write=1.00, max_output_tokens=8_192
    ),
    # Google Gemini — ai.google.dev/gemini-api/docs/pricing ("context caching price", text/image/video);
    # limits from ai.google.dev/gemini-api/docs/models. Gemini 2.0 Flash is shut down on the Gemini API;
    # kept so existing deployments stay priced.
    "gemini-2.5-pro": Price(1.25, 10.00, cached_input=0.125, max_output_tokens=65_536),
    "gemini-2.5-flash": Price(0.30, 2.50, cached_input=0.03, max_output_tokens=65_536),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, cached_input=0.01, max_output_tokens=65_536),
    "gemini-2.0-flash": Price(0.10, 0.40, cached_input=0.025, max_output_tokens=8_192),
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
