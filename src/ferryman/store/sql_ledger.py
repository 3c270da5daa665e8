"""The spend ledger in SQL: the durable truth of what every request cost, and the reports read from it.

`SqlLedger` implements `core.shared_state.Ledger`. `append_many` writes a batch in one transaction:
the ledger rows whose request id is new (a look-up first, then `INSERT … ON CONFLICT DO NOTHING
RETURNING request_id` for writers racing on the same ids), then the two daily rollups (with and
without the end user) summed from exactly the rows that insert returned. A replayed batch therefore
inserts nothing and adds nothing, so the rollups always equal the ledger, however often the Redis
feeder delivers an entry. Reports and usage read the coarser rollup unless they ask about end users.

On PostgreSQL the ledger is partitioned by month: the writer creates the current and the next month's
partitions ahead (idempotently, under an advisory lock), and a row for any other month lands in the
DEFAULT partition, to be moved into its month if that partition is ever made. This is the store's
boundary: database and driver failures leave it as `StoreUnavailableError`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Insert,
    RowMapping,
    Select,
    Table,
    bindparam,
    cast,
    func,
    null,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from ferryman.core.shared_state import SpendEntry
from ferryman.errors import StoreUnavailableError
from ferryman.store.tables import LEDGER_PARTITION_PREFIX, Base, DailySpendRow, KeyDailySpendRow, LedgerRow

log = logging.getLogger("ferryman.store.ledger")

LEDGER: Table = Base.metadata.tables[LedgerRow.__tablename__]
DAILY: Table = Base.metadata.tables[DailySpendRow.__tablename__]
DAILY_BY_KEY: Table = Base.metadata.tables[KeyDailySpendRow.__tablename__]
SUMS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "unpriced_requests")
ROLLUP_SUMS = (*SUMS, "cache_write_tokens", "reasoning_tokens")
"""What the rollups sum: the reports' `SUMS`, and the parts of the token counts kept for later reports."""
if TYPE_CHECKING:
    Query = Select[*tuple[Any, ...]]

GROUP_FIELDS: Mapping[str, str] = {
    "key": "key_id",
    "team": "team_id",
    "end_user": "end_user",
    "model": "model",
    "provider": "provider",
    "day": "day",
}
"""What a report can be grouped by → the rollup column (and `SpendRow` field) it groups."""
DIMENSIONS = ("day", "key_id", "team_id", "end_user", "model", "provider")  # `SpendRow`'s, in order

MAX_TEXT = 200
"""Longest id, name or end user stored as given. A longer one (or one PostgreSQL cannot store) is kept as
a prefix plus a hash of the whole: still distinct, and short enough for every index it is part of."""

_MICRO_CENTS = Decimal("1e-12")  # the ledger's scale, `tables.Cost`
_LOOKUP_CHUNK = 1_000  # request ids per `IN (…)`: far below SQLite's and asyncpg's parameter limits


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """What a key, team or end user used: sums over priced and unpriced requests alike, except
    `cost_usd`, which sums the priced ones; `unpriced_requests` says how many it leaves out."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_requests: int = 0

    @property
    def known_cost_usd(self) -> float | None:
        """`cost_usd`, or `None` when there were requests and none had a price: $0 would claim they
        were free."""
        priced = self.requests - self.unpriced_requests
        return self.cost_usd if priced or not self.requests else None

    def __add__(self, other: UsageTotals) -> UsageTotals:
        """Both together (so `sum(totals, UsageTotals())` adds up rows)."""
        return UsageTotals(*(getattr(self, name) + getattr(other, name) for name in SUMS))


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One group of a spend report: the dimensions grouped by (`None` where not grouped, or absent),
    and the group's totals."""

    totals: UsageTotals
    day: date | None = None
    key_id: str | None = None
    team_id: str | None = None
    end_user: str | None = None
    model: str | None = None
    provider: str | None = None

    @property
    def cost_usd(self) -> float | None:
        """The priced requests' cost (`UsageTotals.known_cost_usd`)."""
        return self.totals.known_cost_usd


def bounded(value: str) -> str:
    """`value` as the ledger stores it: unchanged when short and storable, else prefix + hash."""
    if len(value) <= MAX_TEXT and ((value.isascii() and "\x00" not in value) or _storable(value)):
        return value  # the common case, ASCII, needs no trial encoding (ASCII always encodes)
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    clean = value.encode("utf-8", "replace").decode().replace("\x00", "\ufffd")
    return f"{clean[: MAX_TEXT - 17]}~{digest}"


def _storable(value: str) -> bool:
    """Whether PostgreSQL takes `value` as text: no NUL, no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _optional(value: str | None) -> str | None:
    return bounded(value) if value else None


def _exact(cost: float | None) -> Decimal | None:
    """The cost at the ledger's scale, computed once so a row and its rollup add the same number."""
    return None if cost is None else Decimal(repr(cost)).quantize(_MICRO_CENTS)


def month_start(moment: datetime) -> date:
    """The first day of `moment`'s UTC month."""
    return moment.astimezone(UTC).date().replace(day=1)


def next_month(month: date) -> date:
    """The first day of the month after `month`."""
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


def first_day_from(moment: datetime) -> date:
    """The first UTC day that starts at or after `moment`."""
    moment = moment.astimezone(UTC)
    return moment.date() if moment.time() == time() else moment.date() + timedelta(days=1)


def partition_name(month: date) -> str:
    """The PostgreSQL partition holding `month`'s rows."""
    return f"{LEDGER_PARTITION_PREFIX}y{month.year:04d}m{month.month:02d}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqlLedger:
    """The ledger and its rollup on one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._months: set[date] = set()  # partitions known to exist

    @asynccontextmanager
    async def _connection(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection, in a transaction committed on exit when `write`; database and driver errors
        leave as StoreUnavailableError."""
        try:
            if write:
                async with self._engine.begin() as conn:
                    yield conn
            else:
                async with self._engine.connect() as conn:
                    yield conn
        except (SQLAlchemyError, OSError) as exc:
            log.warning("spend ledger query failed: %s", type(exc).__name__)
            raise StoreUnavailableError(
                "The spend ledger is unavailable; retry shortly.", code="ledger_unavailable"
            ) from exc

    async def prepare(self) -> None:
        """Create this month's and next month's partitions now (PostgreSQL), rather than on first write."""
        await self._ensure_partitions(strict=True)

    async def append(self, entry: SpendEntry) -> bool:
        """Record `entry` (committed on return); `False` when its request id is already recorded."""
        return await self.append_many([entry]) == 1

    async def append_many(self, entries: Iterable[SpendEntry]) -> int:
        """Record a batch in one transaction; returns how many were new (duplicates are skipped, the
        first entry of a request id kept). The rollup gains exactly the rows inserted."""
        batch = _first_of_each(entries)
        if not batch:
            return 0
        await self._ensure_partitions(strict=False)
        async with self._connection(write=True) as conn:
            known = await _known_ids(conn, list(batch))
            # In request-id order, so writers racing on the same ids wait for each other in one order
            # (one waits for the other to commit) instead of deadlocking.
            # Each row's values are computed once (bounded text, exact cost): the insert and the rollup
            # read the same dicts.
            fresh = [
                _ledger_values(request_id, entry)
                for request_id, entry in sorted(batch.items())
                if request_id not in known
            ]
            if not fresh:
                return 0
            inserted = set(await self._insert_ledger(conn, fresh))
            written = [row for row in fresh if row["request_id"] in inserted]
            await self._add_to_rollup(conn, written)
        return len(written)

    async def entries(self, *, since: datetime | None = None) -> list[SpendEntry]:
        """Entries at or after `since` (tz-aware), oldest first."""
        if since is not None and since.utcoffset() is None:
            raise ValueError("since must be timezone-aware")
        query = select(LEDGER).order_by(LEDGER.c.at, LEDGER.c.request_id)
        if since is not None:
            query = query.where(LEDGER.c.at >= since)
        async with self._connection() as conn:
            return [_entry(row) for row in (await conn.execute(query)).mappings()]

    async def spend_report(
        self,
        group_by: Sequence[str],
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        key_id: str | None = None,
        team_id: str | None = None,
        limit: int | None = None,
    ) -> list[SpendRow]:
        """Spend grouped by `group_by` (keys of `GROUP_FIELDS`), whole UTC days from `start`'s day up to
        `end` (exclusive at midnight, else including `end`'s day), ordered by the groups; at most
        `limit` rows. With no groups, one row: the totals (zeros over no spend)."""
        unknown = [name for name in group_by if name not in GROUP_FIELDS]
        if unknown:
            raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUP_FIELDS)}")
        rollup = DAILY if "end_user" in group_by else DAILY_BY_KEY
        grouped = {GROUP_FIELDS[name] for name in group_by}
        # Every dimension, in `SpendRow`'s order (NULL where not grouped): rows map onto it by position.
        shown = [_shown(rollup, field) if field in grouped else null() for field in DIMENSIONS]
        columns = [rollup.c[GROUP_FIELDS[name]] for name in group_by]
        query = _sums(select(*shown), rollup).group_by(*columns).order_by(*columns)
        query = _in_days(query, rollup, start, end)
        if key_id is not None:
            query = query.where(rollup.c.key_id == bounded(key_id))
        if team_id is not None:
            query = query.where(rollup.c.team_id == bounded(team_id))
        if limit is not None:
            query = query.limit(limit)
        async with self._connection() as conn:
            rows = (await conn.execute(query)).all()
        width = len(DIMENSIONS)
        return [SpendRow(UsageTotals(*row[width:]), *row[:width]) for row in rows]

    async def usage_of(
        self,
        *,
        key_id: str | None = None,
        team_id: str | None = None,
        end_user: str | None = None,
        since: datetime | None = None,
    ) -> UsageTotals:
        """What the key / team / end user named (all given must match) used at or after `since`.

        Whole days come from the rollup; the part of `since`'s day after `since` comes from the ledger
        itself, so a budget period starting mid-day (or a restart rebuilding counters) is still exact.
        """
        if since is not None and since.utcoffset() is None:
            raise ValueError("since must be timezone-aware")
        who = {"key_id": key_id, "team_id": team_id, "end_user": end_user}
        named = {column: bounded(value) for column, value in who.items() if value is not None}
        rollup = DAILY if end_user is not None else DAILY_BY_KEY
        whole_days = _sums(select(), rollup).where(
            *(rollup.c[name] == value for name, value in named.items())
        )
        partial: Query | None = None
        if since is not None:
            since = since.astimezone(UTC)
            first_whole = first_day_from(since)
            whole_days = whole_days.where(rollup.c.day >= first_whole)
            if first_whole != since.date():
                midnight = datetime.combine(first_whole, time(), UTC)
                partial = _ledger_sums().where(LEDGER.c.at >= since, LEDGER.c.at < midnight)
                partial = partial.where(*(LEDGER.c[column] == value for column, value in named.items()))
        async with self._connection() as conn:
            totals = UsageTotals(*(await conn.execute(whole_days)).one())
            if partial is not None:
                totals += UsageTotals(*(await conn.execute(partial)).one())
        return totals

    async def _insert_ledger(self, conn: AsyncConnection, rows: Sequence[LedgerValues]) -> list[str]:
        result = await conn.execute(_insert_ledger_statement(self._postgres), rows)
        return list(result.scalars())

    async def _add_to_rollup(self, conn: AsyncConnection, rows: Sequence[LedgerValues]) -> None:
        """Add the ledger rows to both rollups."""
        if not rows:
            return
        fine = _rollup(rows)
        await self._upsert(conn, DAILY, fine)
        await self._upsert(conn, DAILY_BY_KEY, _coarser(fine))

    async def _upsert(
        self, conn: AsyncConnection, rollup: Table, rows: Mapping[tuple[Any, ...], Sums]
    ) -> None:
        statement = _upsert_statement(rollup, self._postgres)
        key_names = [column.name for column in rollup.primary_key.columns]
        # Sorted, so concurrent writers lock rollup rows in the same order and cannot deadlock each other.
        values = [
            dict(zip(key_names, key, strict=True)) | sums.values() for key, sums in sorted(rows.items())
        ]
        await conn.execute(statement, values)

    async def _ensure_partitions(self, *, strict: bool) -> None:
        """Make sure this and next month's partitions exist (PostgreSQL). Without them rows still land
        in the DEFAULT partition, so when not `strict` a failure here is logged and left to the insert."""
        if not self._postgres:
            return
        this_month = month_start(self._clock())
        wanted = [month for month in (this_month, next_month(this_month)) if month not in self._months]
        if not wanted:
            return
        try:
            async with self._connection(write=True) as conn:
                for month in wanted:
                    await _create_partition(conn, month)
        except StoreUnavailableError:
            if strict:
                raise
            return
        self._months.update(wanted)


def open_ledger(engine: AsyncEngine) -> SqlLedger:
    """The SQL ledger on the key store's engine (the same database holds keys, teams and spend)."""
    return SqlLedger(engine)


def _first_of_each(entries: Iterable[SpendEntry]) -> dict[str, SpendEntry]:
    """The batch by stored request id, keeping the first entry of each (as the ledger keeps the first)."""
    batch: dict[str, SpendEntry] = {}
    for entry in entries:
        batch.setdefault(bounded(entry.request_id), entry)
    return batch


# The writer's statements, built once per table and dialect and reused by every batch: building one
# is pure CPU (`insert.excluded` alone makes a column collection), and a reused statement also keeps
# its SQLAlchemy cache key, so each batch goes straight to the compiled form.


@functools.cache
def _insert_ledger_statement(postgres: bool) -> Insert:
    """New ledger rows in; the request ids actually inserted come back (a racing writer's are not)."""
    insert = postgresql.insert(LEDGER) if postgres else sqlite.insert(LEDGER)
    return insert.on_conflict_do_nothing().returning(LEDGER.c.request_id)


@functools.cache
def _upsert_statement(rollup: Table, postgres: bool) -> Insert:
    """A rollup row inserted, or its sums added to the row already there."""
    insert = postgresql.insert(rollup) if postgres else sqlite.insert(rollup)
    return insert.on_conflict_do_update(
        index_elements=list(rollup.primary_key.columns),
        set_={name: rollup.c[name] + insert.excluded[name] for name in ROLLUP_SUMS},
    )


_KNOWN_IDS = select(LEDGER.c.request_id).where(LEDGER.c.request_id.in_(bindparam("ids", expanding=True)))
"""Which of the `ids` are in the ledger (`_known_ids`); the list expands to one parameter per id."""


async def _known_ids(conn: AsyncConnection, request_ids: list[str]) -> set[str]:
    """Which ids are recorded already. On PostgreSQL the primary key is (request_id, at), so this look-up
    (one index probe per partition) is what catches an id recorded before under another timestamp."""
    known: set[str] = set()
    for start in range(0, len(request_ids), _LOOKUP_CHUNK):
        chunk = request_ids[start : start + _LOOKUP_CHUNK]
        known.update(await conn.scalars(_KNOWN_IDS, {"ids": chunk}))
    return known


LedgerValues = dict[str, Any]
"""One ledger row's bind parameters, by column name (`_ledger_values`)."""


def _ledger_values(request_id: str, entry: SpendEntry) -> LedgerValues:
    """`entry` as its ledger row; `request_id` is its id already `bounded`."""
    return {
        "request_id": request_id,
        "at": entry.at,
        "key_id": _optional(entry.key_id),
        "team_id": _optional(entry.team_id),
        "end_user": _optional(entry.end_user),
        "model": bounded(entry.model),
        "provider": bounded(entry.provider),
        "deployment": bounded(entry.deployment),
        "input_tokens": entry.input_tokens,
        "output_tokens": entry.output_tokens,
        "cached_tokens": entry.cached_tokens,
        "cache_write_tokens": entry.cache_write_tokens,
        "reasoning_tokens": entry.reasoning_tokens,
        "cost_usd": _exact(entry.cost_usd),
        "estimated": entry.estimated,
    }


@dataclass(slots=True)
class Sums:
    """One rollup row's sums, as a batch adds them up (cost exact, at the ledger's scale)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    # Field by field, not a loop over `ROLLUP_SUMS` with getattr/setattr: this runs for every row of
    # every batch.

    def add(self, other: Sums) -> None:
        """Add `other` into these sums."""
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd
        self.unpriced_requests += other.unpriced_requests
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens

    def values(self) -> dict[str, Any]:
        """As bind parameters (the keys are `ROLLUP_SUMS`)."""
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": self.cost_usd,
            "unpriced_requests": self.unpriced_requests,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


RollupKey = tuple[date, str, str, str, str, str]  # day, key, team, end user, model, provider


def _rollup(rows: Iterable[LedgerValues]) -> dict[RollupKey, Sums]:
    """The ledger rows summed per `spend_daily` key; an absent key, team or end user is ''. The rows'
    text is bounded and their cost exact already, so a rollup adds exactly what its rows hold."""
    groups: dict[RollupKey, Sums] = {}
    for row in rows:
        key = (
            row["at"].astimezone(UTC).date(),
            row["key_id"] or "",
            row["team_id"] or "",
            row["end_user"] or "",
            row["model"],
            row["provider"],
        )
        sums = groups.get(key)
        if sums is None:
            sums = groups[key] = Sums()
        sums.requests += 1
        sums.input_tokens += row["input_tokens"]
        sums.output_tokens += row["output_tokens"]
        sums.cached_tokens += row["cached_tokens"]
        cost = row["cost_usd"]
        if cost is None:
            sums.unpriced_requests += 1
        elif cost:  # a zero cost adds nothing (and leaves the sum Decimal(0), not 0E-12)
            sums.cost_usd += cost
        sums.cache_write_tokens += row["cache_write_tokens"]
        sums.reasoning_tokens += row["reasoning_tokens"]
    return groups


def _coarser(groups: Mapping[RollupKey, Sums]) -> dict[tuple[date, str, str, str, str], Sums]:
    """`spend_daily` rows summed over end users: `spend_daily_by_key` rows."""
    coarse: dict[tuple[date, str, str, str, str], Sums] = {}
    for (day, key_id, team_id, _, model, provider), sums in groups.items():
        coarse.setdefault((day, key_id, team_id, model, provider), Sums()).add(sums)
    return coarse


async def _create_partition(conn: AsyncConnection, month: date) -> None:
    """Create `month`'s partition unless it exists, moving any of its rows out of DEFAULT first
    (PostgreSQL refuses a partition whose rows already sit in the default one)."""
    name = partition_name(month)
    if await conn.scalar(text("SELECT to_regclass(:name)"), {"name": name}) is not None:
        return
    # A lock on the parent table, not an advisory lock: only a relation lock makes PostgreSQL read the
    # catalog changes committed while we waited, so the look-up below sees the partition another replica
    # just made (after an advisory lock it still found none, and CREATE TABLE failed the start-up).
    # SHARE UPDATE EXCLUSIVE is what ATTACH PARTITION takes anyway; inserts never wait for it.
    await conn.execute(text("LOCK TABLE spend_ledger IN SHARE UPDATE EXCLUSIVE MODE"))
    if await conn.scalar(text("SELECT to_regclass(:name)"), {"name": name}) is not None:
        return  # another replica made it while we waited for the lock
    low, high = (datetime.combine(day, time(), UTC) for day in (month, next_month(month)))
    # Identifiers and bounds come from dates, never from input; DDL takes no bind parameters.
    await conn.execute(text(f'CREATE TABLE "{name}" (LIKE spend_ledger INCLUDING DEFAULTS)'))
    moved = "DELETE FROM spend_ledger_default WHERE at >= :low AND at < :high RETURNING *"
    move = f'WITH moved AS ({moved}) INSERT INTO "{name}" SELECT * FROM moved'  # noqa: S608 - see above  # nosec B608
    await conn.execute(text(move), {"low": low, "high": high})
    await conn.execute(
        text(
            f'ALTER TABLE spend_ledger ATTACH PARTITION "{name}" '
            f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
        )
    )
    log.info("created spend ledger partition %s", name)


def _total(column: ColumnElement[Any], kind: TypeEngine[Any] | None = None) -> ColumnElement[Any]:
    """SUM, 0 over no rows, as the database's own integer or float. PostgreSQL sums BIGINT as NUMERIC,
    which the driver hands back as Decimal: several times slower to decode for a month's report."""
    return cast(func.coalesce(func.sum(column), 0), kind if kind is not None else BigInteger())


def _sums(query: Query, rollup: Table) -> Query:
    """The six `UsageTotals` of the rollup's rows, in its field order."""
    return query.add_columns(
        *(_total(rollup.c[name], Float() if name == "cost_usd" else None) for name in SUMS)
    )


def _ledger_sums() -> Query:
    """The same sums as `_sums`, straight from ledger rows."""
    return select(
        cast(func.count(), BigInteger),
        _total(LEDGER.c.input_tokens),
        _total(LEDGER.c.output_tokens),
        _total(LEDGER.c.cached_tokens),
        _total(LEDGER.c.cost_usd, Float()),
        cast(func.count() - func.count(LEDGER.c.cost_usd), BigInteger),  # COUNT(column) skips NULLs
    )


def _shown(rollup: Table, field: str) -> ColumnElement[Any]:
    """A grouped column as reports show it: '' (how the rollups store "no key / team / end user", see
    `tables.DailySpendRow`) as NULL."""
    column = rollup.c[field]
    return column if field in ("day", "model", "provider") else func.nullif(column, "")


def _in_days(query: Query, rollup: Table, start: datetime | None, end: datetime | None) -> Query:
    if start is not None:
        query = query.where(rollup.c.day >= start.astimezone(UTC).date())
    if end is not None:
        query = query.where(rollup.c.day < first_day_from(end))
    return query


def _entry(row: RowMapping) -> SpendEntry:
    return SpendEntry(**{field.name: row[field.name] for field in fields(SpendEntry)})
