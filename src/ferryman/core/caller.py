"""Who is calling: the caller the core decides for, and the model rules, limits and budgets it carries.

`api/auth.py` turns a presented key into a `Caller`; from there on the core never sees a key or an
HTTP header. The key's and the team's rules are kept apart because a team's limits and budgets are
shared by all its keys, while for model allow-lists the stricter of the two applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits and budgets of a key or a team; `None` means unlimited on that axis.

    The `end_user_*` budgets are the default budget of each end user of the key (of each key, for a
    team's); `end_user_budgets` (keys only) names end users whose own (daily, monthly) budget replaces
    the defaults. Which one applies is decided by the budget stage (`Budgets.budgets`).
    """

    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel: int | None = None
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    end_user_daily_budget_usd: float | None = None
    end_user_monthly_budget_usd: float | None = None
    end_user_budgets: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)


def models_allow(patterns: tuple[str, ...] | None, model: str) -> bool:
    """Whether an allow-list admits `model`: `None` admits all; entries are names or `*` patterns."""
    if patterns is None:
        return True
    return any(model == p or ("*" in p and fnmatchcase(model, p)) for p in patterns)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of one request.

    `key_alias` names the caller in logs (never the secret); `end_user` is the application's own user,
    when the client names one, so budgets and usage can be kept per end user of a shared key.
    """

    key_alias: str
    is_admin: bool = False
    key_id: str | None = None
    team_id: str | None = None
    end_user: str | None = None
    key_models: tuple[str, ...] | None = None
    team_models: tuple[str, ...] | None = None
    key_limits: Limits = field(default_factory=Limits)
    team_limits: Limits | None = None

    def allows_model(self, model: str) -> bool:
        """Whether both the key's and the team's allow-lists admit `model`."""
        return models_allow(self.key_models, model) and models_allow(self.team_models, model)

    def for_end_user(self, end_user: str | None) -> Caller:
        """The same caller acting for `end_user` (unchanged when `end_user` is None or already set)."""
        if end_user is None or end_user == self.end_user:
            return self
        return replace(self, end_user=end_user)


ANONYMOUS = Caller(key_alias="anonymous")
"""The caller of a gateway that requires no key (the embedded default), and of refused requests."""

MASTER = Caller(key_alias="master", is_admin=True)
"""The holder of the master key: every model, and the admin API."""
