"""What tests of limits and budgets through gateway processes share: the gateway's own estimate, a
priced OpenAI deployment, an upstream that spends exactly the worst case, and a concurrent burst.

Exactness tests predict to the unit what the gateway reserves, so they must count a prompt exactly as
the gateway does for its deployment — one place, not a copy per test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from ferryman.core.estimate import estimate_input_tokens
from ferryman.testing import FakeOpenAI, Reply, Usage
from ferryman.tokenizers import Tokenizers
from ferryman.wire import openai as openai_wire


def openai_estimate(body: dict[str, Any], model: str = "gpt-4o-mini") -> int:
    """The input tokens a gateway reserves for the OpenAI chat `body` on an OpenAI `model` deployment."""
    request = openai_wire.parse_chat_request(body)
    return estimate_input_tokens(request, Tokenizers().for_model("openai", model))


DEAR = {"input_per_mtok": 100.0, "output_per_mtok": 1000.0}  # a few requests fill a small budget
FREE = {"input_per_mtok": 0.0, "output_per_mtok": 0.0}  # priced at $0: for tests of routing, not money
OUTPUT_TOKENS = 10  # what `worst_case_upstream` answers with: the bodies' `max_tokens`


def openai_deployment(fake: FakeOpenAI, price: dict[str, float] = DEAR, **extra: Any) -> dict[str, Any]:
    """A gpt-4o-mini deployment on `fake`, priced (budgeted keys refuse unpriced models); `extra`
    adds or overrides keys (`name`, `priority`, `weight` …)."""
    return {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": "k",
        "price": price,
        **extra,
    }


@contextmanager
def worst_case_upstream(body: dict[str, Any], *, delay: float = 0.0) -> Iterator[tuple[FakeOpenAI, float]]:
    """A fake whose every answer spends exactly what the gateway reserves for `body` (whose
    `max_tokens` must be `OUTPUT_TOKENS`) at `DEAR` prices: (the fake, that cost in USD)."""
    assert body["max_tokens"] == OUTPUT_TOKENS
    estimate = openai_estimate(body)
    each = (estimate * DEAR["input_per_mtok"] + OUTPUT_TOKENS * DEAR["output_per_mtok"]) / 1e6
    with FakeOpenAI() as fake:
        usage = Usage(input_tokens=estimate, output_tokens=OUTPUT_TOKENS)
        fake.script.set_default(Reply.text("ok", delay=delay, usage=usage))
        yield fake, each


async def burst(urls: list[str], body: dict[str, Any], key: str, total: int) -> list[httpx.Response]:
    """`total` chat completions sent at once, spread over the replicas in turn, each on its own
    connection (no keep-alive: every request is admitted separately)."""
    limits = httpx.Limits(max_connections=total, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        urls[i % len(urls)] + "/v1/chat/completions",
                        json=body,
                        headers={"authorization": f"Bearer {key}"},
                    )
                    for i in range(total)
                )
            )
        )
