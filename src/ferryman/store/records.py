"""The key store's vocabulary: teams, virtual keys, their limits, and the grant auth checks per request.

A `KeyGrant` is what the hot path caches: one key merged with its team, so a request is authorised from
memory. Limits and budgets (`ferryman.core.caller.Limits`) are carried for the rate-limit and budget
stages; this module only stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from ferryman.core.caller import AdminRole, Limits, models_allow

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"
Metadata: TypeAlias = "dict[str, JSONValue]"


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC (every timestamp the store writes)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TeamSettings:
    """What an admin sets on a team; the team's rules bound every key in it."""

    alias: str | None = None
    models: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)
    metadata: Metadata = field(default_factory=dict)
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class TeamRecord:
    """A stored team."""

    id: str
    settings: TeamSettings
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class KeySettings:
    """What an admin sets on a virtual key (everything but its secret); `role` is its admin role, if any."""

    alias: str | None = None
    team_id: str | None = None
    models: tuple[str, ...] | None = None
    expires_at: datetime | None = None
    limits: Limits = field(default_factory=Limits)
    metadata: Metadata = field(default_factory=dict)
    blocked: bool = False
    role: AdminRole | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored virtual key; `key_prefix` is the non-secret start of the key, for people to recognise."""

    id: str
    key_prefix: str
    settings: KeySettings
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key's secret together with its record: returned once, at creation or rotation, never again."""

    secret: str
    record: KeyRecord


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """One key merged with its team: everything a request needs to be authenticated and authorised.

    `refusal` folds revocation, blocking (of key or team), a deleted team and expiry into one answer,
    checked at use time so a cached grant still expires on the second.
    """

    key_id: str
    key_hash: str
    alias: str | None
    team_id: str | None = None
    key_models: tuple[str, ...] | None = None
    team_models: tuple[str, ...] | None = None
    key_limits: Limits = field(default_factory=Limits)
    team_limits: Limits | None = None
    expires_at: datetime | None = None
    revoked: bool = False
    blocked: bool = False
    role: AdminRole | None = None

    def refusal(self, now: datetime) -> str | None:
        """Why this key may not be used now (a metric reason), or `None` when it may."""
        if self.revoked:
            return "revoked"
        if self.blocked:
            return "blocked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return None

    def allows_model(self, model: str) -> bool:
        """The stricter of key and team applies: the model must pass both allow-lists."""
        return models_allow(self.key_models, model) and models_allow(self.team_models, model)


__all__ = [
    "AdminRole",
    "IssuedKey",
    "JSONValue",
    "KeyGrant",
    "KeyRecord",
    "KeySettings",
    "Limits",
    "Metadata",
    "TeamRecord",
    "TeamSettings",
    "models_allow",
    "utc_now",
]
