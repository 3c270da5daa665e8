"""`GET /v1/usage`: the calling key's own spend and what is left of its budgets, per window.

Spend of a window with a budget is the budget's committed total in the shared state — exactly what
the budget stage enforces, including requests the ledger feeder has not yet moved into SQL; a window
without a budget reads the SQL ledger. Either way a key sees only its own figures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman.api.state import AppState
from ferryman.core.budgets import Budget, Budgets, Period
from ferryman.errors import InvalidRequestError
from ferryman.store.journal import JournalLedger
from ferryman.store.sql_ledger import SqlLedger


async def usage(request: Request) -> Response:
    """GET /v1/usage."""
    state: AppState = request.app.state.ferryman
    caller = await state.auth.authenticate(request)
    if caller.key_id is None:
        raise InvalidRequestError(
            "Usage is kept per virtual key: call with one (the master key sees everything in /admin/spend).",
            code="virtual_key_required",
        )
    stage = next(s for s in state.pipeline.stages if isinstance(s, Budgets))
    if isinstance(state.shared.ledger, JournalLedger):
        await state.shared.ledger.flush()  # this process's last requests, into SQL first
    ledger = SqlLedger(state.keys.engine) if state.keys is not None and state.keys.engine else None
    now = datetime.now(UTC)
    limits = caller.key_limits
    caps = {"daily": limits.daily_budget_usd, "monthly": limits.monthly_budget_usd}
    windows: dict[str, object] = {}
    for period in get_args(Period):
        start, resets_at, cap = stage.window_start(period, now), stage.resets_at(period, now), caps[period]
        totals = await ledger.usage_of(key_id=caller.key_id, since=start) if ledger is not None else None
        spent: float | None = totals.known_cost_usd if totals is not None else None
        window: dict[str, object] = {
            "start": start.isoformat(),
            "resets_at": resets_at.isoformat(),
            "requests": totals.requests if totals is not None else None,
            "input_tokens": totals.input_tokens if totals is not None else None,
            "output_tokens": totals.output_tokens if totals is not None else None,
            "unpriced_requests": totals.unpriced_requests if totals is not None else None,
            "budget_usd": cap,
        }
        if cap is not None:
            budget = Budget("key", caller.key_id, caller.key_alias, period, cap)
            committed, held = await stage.reservations.level(stage.window_key(budget, now))
            spent = committed
            window |= {"reserved_usd": held, "remaining_usd": max(cap - committed - held, 0.0)}
        window["spent_usd"] = spent
        windows[period] = window
    body = {"object": "usage", "key": {"id": caller.key_id, "alias": caller.key_alias}, "windows": windows}
    return Response(orjson.dumps(body), media_type="application/json")


def usage_routes() -> list[BaseRoute]:
    """The usage path, also without `/v1` for clients whose base URL omits it."""
    return [Route(path, usage, methods=["GET"]) for path in ("/v1/usage", "/usage")]
