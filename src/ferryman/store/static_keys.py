"""Keys declared in the config file (`keys:`), turned into grants indexed by key hash."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC

from ferryman.core.caller import parse_role
from ferryman.settings import StaticKey
from ferryman.store.credentials import hash_key
from ferryman.store.records import KeyGrant, Limits


def static_grants(keys: Iterable[StaticKey]) -> Mapping[str, KeyGrant]:
    """Hash → grant for every configured key; ids are `static:<alias>`."""
    grants: dict[str, KeyGrant] = {}
    for key in keys:
        digest = hash_key(key.key.get_secret_value()) if key.key is not None else str(key.key_hash).lower()
        grants[digest] = _grant(key, digest)
    return grants


def _grant(key: StaticKey, digest: str) -> KeyGrant:
    budget, end_user = key.budget, key.end_user_budget
    expires = key.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return KeyGrant(
        key_id=f"static:{key.alias}",
        key_hash=digest,
        alias=key.alias,
        key_models=None if key.models is None else tuple(key.models),
        key_limits=Limits(
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            max_parallel=key.max_parallel,
            daily_budget_usd=budget.daily_usd if budget else None,
            monthly_budget_usd=budget.monthly_usd if budget else None,
            end_user_daily_budget_usd=end_user.daily_usd if end_user else None,
            end_user_monthly_budget_usd=end_user.monthly_usd if end_user else None,
            end_user_budgets={
                who: (own.daily_usd, own.monthly_usd) for who, own in key.end_user_budgets.items()
            },
        ),
        expires_at=expires,
        role=parse_role(key.role),
    )
