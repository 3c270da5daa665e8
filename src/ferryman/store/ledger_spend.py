"""A budget's spend as the SQL ledger records it: what `core.budgets` rebuilds a lost counter from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from ferryman.core.budgets import Budget
from ferryman.errors import StoreUnavailableError
from ferryman.store.sql_ledger import SqlLedger


class LedgerSpend:
    """Implements the core's `SpendRecord` over `SqlLedger.usage_of` (exact for a window starting mid-day).

    `before_read` runs before each read: the embedded journal's flush, so that SQL holds every spend this
    process acknowledged. Reads are rare — once per budget and window, when the shared state does not
    hold the level — so the flush and the query stay off the hot path.
    """

    def __init__(
        self, ledger: SqlLedger, *, before_read: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._ledger = ledger
        self._before_read = before_read

    async def spent_since(self, budget: Budget, since: datetime) -> float:
        """The priced spend of `budget`'s key / team / end user (everyone's for the gateway) since `since`."""
        if self._before_read is not None:
            try:
                await self._before_read()
            except OSError as exc:  # the journal could not be moved: SQL alone would miss its spend
                raise StoreUnavailableError("the spend journal cannot be read into the ledger") from exc
        totals = await self._ledger.usage_of(
            key_id=budget.key_id, team_id=budget.team_id, end_user=budget.end_user, since=since
        )
        return totals.cost_usd
