"""Who is calling: the caller the core decides for, and the model rules, limits and budgets it carries.

`api/auth.py` turns a presented key into a `Caller`; from there on the core never sees a key or an
HTTP header. A caller may also hold an admin role (`AdminRole`): what it may do on `/admin/`, decided
here by HTTP method so that every admin route, including ones added later, is governed the same way.
The key's and the team's rules are kept apart because a team's limits and budgets are shared by all
its keys, while for model allow-lists the stricter of the two applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fnmatch import fnmatchcase


class AdminRole(StrEnum):
    """What a key may do on the admin API; a key without one is an API key only (403 on `/admin/`).

    `viewer` reads (GET and HEAD on every admin route); `admin` does everything. The master key is
    always `admin`.
    """

    VIEWER = "viewer"
    ADMIN = "admin"


ADMIN_ROLES: tuple[str, ...] = tuple(role.value for role in AdminRole)
READ_METHODS = frozenset({"GET", "HEAD"})
"""The methods a viewer may use: the ones that change nothing."""


def parse_role(value: object) -> AdminRole | None:
    """The role a stored or configured value names; `None` (or `""`) is no role. ValueError for anything
    else, naming the choices, so a bad value is refused at the edge rather than read as "no role"."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return AdminRole(value.strip().lower())
        except ValueError:
            pass
    raise ValueError(f"role must be one of {', '.join(ADMIN_ROLES)} (or null for none), got {value!r:.40}")


def role_allows(role: AdminRole | None, method: str) -> bool:
    """Whether a caller with `role` may call an admin route with HTTP `method`."""
    if role is AdminRole.ADMIN:
        return True
    return role is AdminRole.VIEWER and method.upper() in READ_METHODS


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
    when the client names one, so budgets and usage can be kept per end user of a shared key. `role` is
    the caller's admin role, if any; on the model routes a key with a role is governed like any other.
    """

    key_alias: str
    role: AdminRole | None = None
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

    def may_administer(self, method: str) -> bool:
        """Whether this caller's role admits an admin route called with `method`."""
        return role_allows(self.role, method)

    def for_end_user(self, end_user: str | None) -> Caller:
        """The same caller acting for `end_user` (unchanged when `end_user` is None or already set)."""
        if end_user is None or end_user == self.end_user:
            return self
        return replace(self, end_user=end_user)


ANONYMOUS = Caller(key_alias="anonymous")
"""The caller of a gateway that requires no key (the embedded default), and of refused requests."""

MASTER = Caller(key_alias="master", role=AdminRole.ADMIN)
"""The holder of the master key: every model, and the admin API."""
