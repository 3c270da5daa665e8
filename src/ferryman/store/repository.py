"""Teams and virtual keys in SQL: the admin operations, and the one-query lookup the hot path needs.

Admin changes run read-modify-write in one transaction (`SELECT … FOR UPDATE` on PostgreSQL), so two
concurrent PATCHes of different fields both land. Revoked keys and deleted teams stay as rows, so a
revoked key is refused as such and its history remains. This is the store's boundary: a database or
driver failure leaves it as `StoreUnavailableError`, never as SQLAlchemy's or the driver's own error.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ferryman.core.caller import AdminRole, parse_role
from ferryman.errors import InvalidRequestError, NotFoundError, StoreUnavailableError
from ferryman.store.credentials import display_prefix, hash_key
from ferryman.store.records import (
    KeyGrant,
    KeyRecord,
    KeySettings,
    Limits,
    TeamRecord,
    TeamSettings,
    utc_now,
)
from ferryman.store.tables import KeyRow, TeamRow, UTCDateTime

KeyChange = Callable[[KeySettings], KeySettings]
TeamChange = Callable[[TeamSettings], TeamSettings]

log = logging.getLogger("ferryman.store")


class KeyRepository:
    """SQL access for teams and keys; every method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def _session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session, in a transaction committed on exit when `write`; whatever the database or its
        driver raises (connecting, querying, committing) leaves as StoreUnavailableError."""
        try:
            if write:
                async with self._sessions.begin() as session:
                    yield session
            else:
                async with self._sessions() as session:
                    yield session
        except (SQLAlchemyError, OSError) as exc:
            log.warning("key store query failed: %s", type(exc).__name__)
            raise StoreUnavailableError("The key store is unavailable; retry shortly.") from exc

    async def create_team(self, settings: TeamSettings) -> TeamRecord:
        """Store a new team."""
        now = utc_now()
        row = TeamRow(id=uuid.uuid4().hex, created_at=now, updated_at=now, deleted_at=None)
        _write_team(row, settings)
        async with self._session(write=True) as session:
            session.add(row)
        return team_record(row)

    async def list_teams(self) -> list[TeamRecord]:
        """Every team not deleted, oldest first."""
        query = select(TeamRow).where(TeamRow.deleted_at.is_(None)).order_by(TeamRow.created_at)
        async with self._session() as session:
            return [team_record(row) for row in await session.scalars(query)]

    async def get_team(self, team_id: str) -> TeamRecord:
        """One team, or NotFoundError."""
        async with self._session() as session:
            return team_record(await _team_row(session, team_id))

    async def update_team(self, team_id: str, change: TeamChange) -> TeamRecord:
        """Apply `change` to a team's settings."""
        async with self._session(write=True) as session:
            row = await _team_row(session, team_id, for_update=True)
            _write_team(row, change(team_record(row).settings))
            row.updated_at = utc_now()
        return team_record(row)

    async def delete_team(self, team_id: str) -> TeamRecord:
        """Mark a team deleted; its keys are refused from then on (the stricter rule applies)."""
        async with self._session(write=True) as session:
            row = await _team_row(session, team_id, for_update=True)
            row.deleted_at = row.updated_at = utc_now()
        return team_record(row)

    async def create_key(self, settings: KeySettings, secret: str) -> KeyRecord:
        """Store a new key under the hash of `secret`."""
        now = utc_now()
        row = KeyRow(
            id=uuid.uuid4().hex,
            key_hash=hash_key(secret),
            key_prefix=display_prefix(secret),
            created_at=now,
            updated_at=now,
            revoked_at=None,
            last_used_at=None,
        )
        async with self._session(write=True) as session:
            await _check_team(session, settings.team_id)
            _write_key(row, settings)
            session.add(row)
        return key_record(row)

    async def list_keys(
        self, *, team_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        """Keys, oldest first; revoked ones only when asked for."""
        query = select(KeyRow).order_by(KeyRow.created_at)
        if team_id is not None:
            query = query.where(KeyRow.team_id == team_id)
        if not include_revoked:
            query = query.where(KeyRow.revoked_at.is_(None))
        async with self._session() as session:
            return [key_record(row) for row in await session.scalars(query)]

    async def get_key(self, key_id: str) -> KeyRecord:
        """One key (revoked ones too), or NotFoundError."""
        async with self._session() as session:
            return key_record(await _key_row(session, key_id))

    async def update_key(self, key_id: str, change: KeyChange) -> tuple[KeyRecord, str]:
        """Apply `change` to a live key; returns the record and the hash to invalidate."""
        async with self._session(write=True) as session:
            row = await _live_key_row(session, key_id)
            settings = change(key_record(row).settings)
            if settings.team_id != row.team_id:
                await _check_team(session, settings.team_id)
            _write_key(row, settings)
            row.updated_at = utc_now()
        return key_record(row), row.key_hash

    async def rotate_key(self, key_id: str, secret: str) -> tuple[KeyRecord, str]:
        """Give a live key a new secret; returns the record and the old hash (now dead)."""
        async with self._session(write=True) as session:
            row = await _live_key_row(session, key_id)
            old_hash = row.key_hash
            row.key_hash, row.key_prefix = hash_key(secret), display_prefix(secret)
            row.updated_at = utc_now()
        return key_record(row), old_hash

    async def revoke_key(self, key_id: str) -> tuple[KeyRecord, str]:
        """Revoke a key for good (idempotent); returns the record and the hash to invalidate."""
        async with self._session(write=True) as session:
            row = await _key_row(session, key_id, for_update=True)
            if row.revoked_at is None:
                row.revoked_at = row.updated_at = utc_now()
        return key_record(row), row.key_hash

    async def grant_for_hash(self, key_hash: str) -> KeyGrant | None:
        """The hot path's lookup: the key and its team in one query, or `None` for an unknown hash."""
        query = (
            select(KeyRow, TeamRow)
            .outerjoin(TeamRow, KeyRow.team_id == TeamRow.id)
            .where(KeyRow.key_hash == key_hash)
        )
        async with self._session() as session:
            found = (await session.execute(query)).first()
        return None if found is None else key_grant(found[0], found[1])

    async def mark_used(self, uses: Mapping[str, datetime]) -> None:
        """Record each key's last use, key id → when (one statement, executed for the whole batch).

        A stamp never moves backwards: a batch retried late, or sent by a replica whose batch is older,
        cannot undo a newer use already recorded.
        """
        if not uses:
            return
        used_at = bindparam("used_at", type_=UTCDateTime())
        statement = (
            update(KeyRow)
            .where(KeyRow.id == bindparam("used_id"))
            .where(or_(KeyRow.last_used_at.is_(None), KeyRow.last_used_at < used_at))
            .values(last_used_at=used_at)
        )
        batch = [{"used_id": key_id, "used_at": at} for key_id, at in uses.items()]
        async with self._session(write=True) as session:
            # On the connection: a Core executemany, not the ORM's bulk update by primary key.
            await (await session.connection()).execute(statement, batch)


async def _team_row(session: AsyncSession, team_id: str, *, for_update: bool = False) -> TeamRow:
    query = select(TeamRow).where(TeamRow.id == team_id, TeamRow.deleted_at.is_(None))
    row = await session.scalar(query.with_for_update() if for_update else query)
    if row is None:
        raise NotFoundError(f"No team with id {team_id!r}.", code="team_not_found")
    return row


async def _key_row(session: AsyncSession, key_id: str, *, for_update: bool = False) -> KeyRow:
    query = select(KeyRow).where(KeyRow.id == key_id)
    row = await session.scalar(query.with_for_update() if for_update else query)
    if row is None:
        raise NotFoundError(f"No key with id {key_id!r}.", code="key_not_found")
    return row


async def _live_key_row(session: AsyncSession, key_id: str) -> KeyRow:
    row = await _key_row(session, key_id, for_update=True)
    if row.revoked_at is not None:
        raise NotFoundError(f"Key {key_id!r} is revoked; create a new one.", code="key_revoked")
    return row


async def _check_team(session: AsyncSession, team_id: str | None) -> None:
    """A key may only join a team that exists (and is not deleted)."""
    if team_id is None:
        return
    found = await session.scalar(
        select(TeamRow.id).where(TeamRow.id == team_id, TeamRow.deleted_at.is_(None))
    )
    if found is None:
        raise InvalidRequestError(
            f"team_id: no team with id {team_id!r}.", param="team_id", code="team_not_found"
        )


def _write_limits(row: KeyRow | TeamRow, limits: Limits) -> None:
    row.rpm_limit, row.tpm_limit, row.max_parallel = limits.rpm_limit, limits.tpm_limit, limits.max_parallel
    row.daily_budget_usd, row.monthly_budget_usd = limits.daily_budget_usd, limits.monthly_budget_usd
    row.end_user_daily_budget_usd = limits.end_user_daily_budget_usd
    row.end_user_monthly_budget_usd = limits.end_user_monthly_budget_usd
    if isinstance(row, KeyRow):  # NULL rather than {} for none, as the rows from before 0005 have
        row.end_user_budgets = {
            end_user: {"daily_usd": daily, "monthly_usd": monthly}
            for end_user, (daily, monthly) in limits.end_user_budgets.items()
        } or None


def _read_limits(row: KeyRow | TeamRow) -> Limits:
    explicit = (row.end_user_budgets if isinstance(row, KeyRow) else None) or {}
    return Limits(
        row.rpm_limit,
        row.tpm_limit,
        row.max_parallel,
        row.daily_budget_usd,
        row.monthly_budget_usd,
        row.end_user_daily_budget_usd,
        row.end_user_monthly_budget_usd,
        {
            end_user: (budget.get("daily_usd"), budget.get("monthly_usd"))
            for end_user, budget in explicit.items()
        },
    )


def _write_team(row: TeamRow, settings: TeamSettings) -> None:
    row.alias, row.blocked, row.metadata_ = settings.alias, settings.blocked, dict(settings.metadata)
    row.models = None if settings.models is None else list(settings.models)
    _write_limits(row, settings.limits)


def _write_key(row: KeyRow, settings: KeySettings) -> None:
    row.alias, row.team_id, row.expires_at = settings.alias, settings.team_id, settings.expires_at
    row.models = None if settings.models is None else list(settings.models)
    row.blocked, row.metadata_ = settings.blocked, dict(settings.metadata)
    row.role = None if settings.role is None else settings.role.value
    _write_limits(row, settings.limits)


def _stored_role(row: KeyRow) -> AdminRole | None:
    """The key's admin role; a value nothing here wrote (edited in the database by hand) is no role at
    all, and logged: an unreadable role must never read as more access."""
    try:
        return parse_role(row.role)
    except ValueError:
        log.warning("key %s has an unknown admin role in the database; treated as none", row.id)
        return None


def _models(stored: list[str] | None) -> tuple[str, ...] | None:
    return None if stored is None else tuple(stored)


def team_record(row: TeamRow) -> TeamRecord:
    """A team row as a record."""
    settings = TeamSettings(
        alias=row.alias,
        models=_models(row.models),
        limits=_read_limits(row),
        metadata=dict(row.metadata_),
        blocked=row.blocked,
    )
    return TeamRecord(id=row.id, settings=settings, created_at=row.created_at, updated_at=row.updated_at)


def key_record(row: KeyRow) -> KeyRecord:
    """A key row as a record."""
    settings = KeySettings(
        alias=row.alias,
        team_id=row.team_id,
        models=_models(row.models),
        expires_at=row.expires_at,
        limits=_read_limits(row),
        metadata=dict(row.metadata_),
        blocked=row.blocked,
        role=_stored_role(row),
    )
    return KeyRecord(
        id=row.id,
        key_prefix=row.key_prefix,
        settings=settings,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def key_grant(key: KeyRow, team: TeamRow | None) -> KeyGrant:
    """Merge a key with its team; a deleted or blocked team blocks the key."""
    team_gone = key.team_id is not None and (team is None or team.deleted_at is not None)
    return KeyGrant(
        key_id=key.id,
        key_hash=key.key_hash,
        alias=key.alias,
        team_id=key.team_id,
        key_models=_models(key.models),
        team_models=None if team is None else _models(team.models),
        key_limits=_read_limits(key),
        team_limits=None if team is None else _read_limits(team),
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        blocked=key.blocked or team_gone or (team is not None and team.blocked),
        role=_stored_role(key),
    )
