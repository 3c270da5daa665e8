"""End-user budgets, socket-free: which of the own, key, team and gateway budgets applies, and that each
end user's budget refuses at its own limit while the key's other end users keep being served."""

from __future__ import annotations

import pytest

from ferryman.core.budgets import BudgetExceededError, Budgets
from ferryman.core.caller import Caller, Limits
from ferryman.core.canonical import Usage
from ferryman.core.exchange import Exchange
from ferryman.core.routing import Router
from ferryman.store.memory import MemoryReservations
from ferryman.testing import Answer, ScriptedUpstream
from tests.core.conftest import target
from tests.core.test_budgets import NOW, PRICE, build, exchange_for

KEY_DEFAULT = Limits(end_user_daily_budget_usd=1.0, end_user_monthly_budget_usd=10.0)
TEAM_DEFAULT = Limits(end_user_daily_budget_usd=2.0, end_user_monthly_budget_usd=20.0)
NO_LIMITS = Limits()


def caller(key: Limits = NO_LIMITS, team: Limits | None = None, end_user: str | None = "ana") -> Caller:
    return Caller(
        key_alias="app",
        key_id="k1",
        team_id="t1" if team is not None else None,
        key_limits=key,
        team_limits=team,
        end_user=end_user,
    )


def end_user_caps(stage: Budgets, exchange: Exchange) -> dict[str, float]:
    return {b.period: b.limit for b in stage.budgets(exchange) if b.scope == "end_user"}


def stage_with_gateway_default(daily: float | None = 3.0, monthly: float | None = 30.0) -> Budgets:
    router = Router({"m": [target(ScriptedUpstream(), price=PRICE)]})
    return Budgets(MemoryReservations(), router, end_user_budget=(daily, monthly), clock=lambda: NOW)


@pytest.mark.parametrize(
    ("key", "team", "expected"),
    [
        # the end user's own budget on the key beats every default
        (
            Limits(end_user_budgets={"ana": (0.5, None)}, end_user_daily_budget_usd=1.0),
            TEAM_DEFAULT,
            {"daily": 0.5},
        ),
        (KEY_DEFAULT, TEAM_DEFAULT, {"daily": 1.0, "monthly": 10.0}),  # the key's default beats the team's
        (Limits(), TEAM_DEFAULT, {"daily": 2.0, "monthly": 20.0}),  # the team's beats the gateway's
        (Limits(), None, {"daily": 3.0, "monthly": 30.0}),  # the gateway's, last
        (Limits(), Limits(), {"daily": 3.0, "monthly": 30.0}),  # a team without one falls through too
    ],
)
def test_the_most_specific_end_user_budget_applies(
    key: Limits, team: Limits | None, expected: dict[str, float]
) -> None:
    stage = stage_with_gateway_default()
    assert end_user_caps(stage, exchange_for(caller(key, team))) == expected


def test_the_winning_level_replaces_both_windows_and_an_own_budget_without_caps_exempts() -> None:
    stage = stage_with_gateway_default()
    daily_only = Limits(end_user_daily_budget_usd=1.0)  # no monthly cap: not the gateway's monthly one
    assert end_user_caps(stage, exchange_for(caller(daily_only, TEAM_DEFAULT))) == {"daily": 1.0}
    exempt = Limits(end_user_daily_budget_usd=1.0, end_user_budgets={"ana": (None, None)})
    assert end_user_caps(stage, exchange_for(caller(exempt, TEAM_DEFAULT))) == {}
    # another end user of the same key still gets the key's default
    assert end_user_caps(stage, exchange_for(caller(exempt, TEAM_DEFAULT, "bo"))) == {"daily": 1.0}


def test_every_level_keeps_the_one_per_key_window_and_ledger_filter() -> None:
    """Whichever level sets the caps, the budget counts the same (key, end user) spend, so rebuilding
    from the ledger and switching defaults keep one counter."""
    stage = stage_with_gateway_default()
    for key, team in [
        (Limits(end_user_budgets={"ana": (0.5, 5.0)}), None),
        (KEY_DEFAULT, None),
        (Limits(), TEAM_DEFAULT),
        (Limits(), None),
    ]:
        budgets = [b for b in stage.budgets(exchange_for(caller(key, team))) if b.scope == "end_user"]
        assert {(b.id, b.name, b.key_id, b.team_id, b.end_user) for b in budgets} == {
            ("k1/ana", "ana", "k1", None, "ana")
        }
        assert stage.window_key(budgets[0], NOW) == "budget:end_user:k1/ana:daily:2026-12-01"


def test_no_end_user_means_no_end_user_budget() -> None:
    stage = stage_with_gateway_default()
    assert end_user_caps(stage, exchange_for(caller(KEY_DEFAULT, TEAM_DEFAULT, end_user=None))) == {}


async def test_each_end_user_is_refused_at_their_own_limit_without_affecting_the_others() -> None:
    upstream = ScriptedUpstream()
    upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=100, output_tokens=1000)))
    pipeline, stage, reservations = build(upstream)
    worst = stage.worst_case(exchange_for(caller()))
    # The key's default leaves room for two worst cases; "vip" has room for five of their own.
    key = Limits(end_user_daily_budget_usd=2.5 * worst, end_user_budgets={"vip": (5.5 * worst, None)})
    for _ in range(2):
        await pipeline.chat(exchange_for(caller(key, end_user="ana")))
    with pytest.raises(BudgetExceededError) as refused:
        await pipeline.chat(exchange_for(caller(key, end_user="ana")))
    assert "daily budget of end_user 'ana'" in refused.value.message
    for _ in range(2):  # another end user of the key has a default budget of their own
        await pipeline.chat(exchange_for(caller(key, end_user="bo")))
    for _ in range(5):  # and the end user with an own budget goes past the default
        await pipeline.chat(exchange_for(caller(key, end_user="vip")))
    with pytest.raises(BudgetExceededError):
        await pipeline.chat(exchange_for(caller(key, end_user="vip")))
    assert len(upstream.calls) == 9  # refused requests never reached the upstream
    spent = 2 * (100 * 1.0 + 1000 * 2.0) / 1e6
    ana, _ = await reservations.level("budget:end_user:k1/ana:daily:2026-12-01")
    bo, _ = await reservations.level("budget:end_user:k1/bo:daily:2026-12-01")
    assert ana == pytest.approx(spent)
    assert bo == pytest.approx(spent)


def test_the_gateways_explicit_budget_of_an_end_user_sits_between_the_keys_own_and_the_defaults() -> None:
    router = Router({"m": [target(ScriptedUpstream(), price=PRICE)]})
    stage = Budgets(
        MemoryReservations(),
        router,
        end_user_budget=(3.0, 30.0),
        end_user_budgets={"ana": (0.25, None)},
        clock=lambda: NOW,
    )
    assert end_user_caps(stage, exchange_for(caller(KEY_DEFAULT, TEAM_DEFAULT))) == {"daily": 0.25}
    own = Limits(end_user_budgets={"ana": (0.5, None)})
    assert end_user_caps(stage, exchange_for(caller(own))) == {"daily": 0.5}  # the key's own still wins
    bo = caller(KEY_DEFAULT, end_user="bo")
    assert end_user_caps(stage, exchange_for(bo)) == {"daily": 1.0, "monthly": 10.0}  # others: defaults
