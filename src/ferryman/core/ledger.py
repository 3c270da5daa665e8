"""The spend ledger as a pipeline stage: every request that reached an upstream leaves one entry.

The entry is appended on exit, before the answer counts as done — for a whole answer before its body
is sent, for a stream before its final frames — and `Ledger.append` is durable when it returns (a SQL
commit in the embedded default, a Redis stream entry with AOF in production, drained into SQL by the
feeder). It is keyed by a spend id that is unique per request even when a client reuses its
`x-request-id`, so a replayed append is dropped and a second request's spend never is.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ferryman.core.canonical import Usage
from ferryman.core.exchange import Exchange
from ferryman.core.shared_state import Ledger, SpendEntry
from ferryman.errors import SharedStateUnavailableError

if TYPE_CHECKING:
    from ferryman.core.pipeline import Answer, Outcome

log = logging.getLogger("ferryman.ledger")


class SpendLedger:
    """The stage; its `enter` does nothing, its `exit` appends what the request spent."""

    name = "ledger"

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Nothing to check: the ledger records, it does not refuse."""
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Append the request's usage and cost (None: unpriced, never $0) if an upstream was used."""
        usage = exchange.usage
        if usage is None or exchange.answered_by != "upstream":
            return
        await self._ledger.append(
            spend_entry(exchange, usage, exchange.provider, exchange.deployment, exchange.cost)
        )


def spend_entry(
    exchange: Exchange, usage: Usage, provider: str, deployment: str, cost: float | None
) -> SpendEntry:
    """The ledger entry of `exchange`: who spent what on which deployment (a cache hit names the cache
    as both, at $0). A fallback model bills as itself, not as the model the client asked for."""
    caller = exchange.caller
    return SpendEntry(
        request_id=exchange.spend_id,
        at=datetime.now(UTC),
        model=exchange.served_model or exchange.model,
        provider=provider,
        deployment=deployment,
        key_id=caller.key_id,
        team_id=caller.team_id,
        end_user=caller.end_user,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        cost_usd=cost,
        estimated=exchange.usage_estimated,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


class FallbackLedger:
    """The fast ledger (a Redis stream), and the durable one (SQL) when the fast one cannot take an
    entry: spend is recorded either way, and a request is failed only when neither can record it.

    An append that timed out may still have reached the stream; the SQL ledger's uniqueness by
    request id then drops the feeder's later copy, so the fallback never counts a request twice.
    """

    def __init__(self, fast: Ledger, durable: Ledger) -> None:
        self._fast = fast
        self._durable = durable

    async def append(self, entry: SpendEntry) -> bool:
        """Append to the fast ledger, or to the durable one while the fast one is unreachable."""
        try:
            return await self._fast.append(entry)
        except SharedStateUnavailableError:
            log.warning("ledger stream unreachable: spend written to SQL directly")
            return await self._durable.append(entry)

    async def entries(self, *, since: datetime | None = None) -> list[SpendEntry]:
        """The durable ledger's entries (the fast one's are on their way there)."""
        return await self._durable.entries(since=since)
