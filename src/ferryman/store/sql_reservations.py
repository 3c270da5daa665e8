"""Budget reservations in SQL: `Reservations` for several workers sharing one database, without Redis.

The same semantics as `store.memory` and the Redis scripts, made atomic across processes by the
database. Every change to a ceiling happens in a transaction that first locks the ceilings' rows in
`budget_levels`, in key order, with one upsert (inserting the rows that are missing; ordered, so two
transactions never wait on each other in a cycle); the reads that follow are new statements, so on
PostgreSQL's READ COMMITTED they see every hold committed before the locks were granted, and two
reservations against one ceiling can never both pass. SQLite has one writer at a time: a transaction
takes the write lock up front (`BEGIN IMMEDIATE`) and the upsert only orders the rows.

Time is the database's clock (`clock_timestamp()` on PostgreSQL, `julianday('now')` on SQLite, where
every worker is on one machine), read once per transaction after the locks, so replicas agree on when
holds lapse and periods end. A lapsed hold simply stops counting (the reads filter by expiry), and a
periodic clean-up deletes what nobody can ask about any more, skipping rows others hold locked.

Database and driver failures leave as `SharedStateUnavailableError`, as Redis failures do, so the
budgets stage applies the same policy whichever backend holds its levels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    Double,
    bindparam,
    case,
    cast,
    delete,
    exists,
    extract,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import Table

from ferryman.core.shared_state import Admission, Ceiling, Reservations, SharedState, within_limit
from ferryman.errors import SharedStateUnavailableError
from ferryman.settings import Settings
from ferryman.store.tables import Base, BudgetHoldCeilingRow, BudgetHoldRow, BudgetLevelRow

LEVELS: Table = Base.metadata.tables[BudgetLevelRow.__tablename__]
HOLDS: Table = Base.metadata.tables[BudgetHoldRow.__tablename__]
HOLD_CEILINGS: Table = Base.metadata.tables[BudgetHoldCeilingRow.__tablename__]
CLEANUP_INTERVAL = 5.0
"""Seconds (this process's monotonic clock) between clean-ups of forgotten holds and ended levels."""

_UNIX_EPOCH_JULIAN_DAY = 2440587.5


def _clock(dialect: str) -> ColumnElement[float]:
    """Seconds since the epoch on the database's own clock, as this dialect says it."""
    if dialect == "postgresql":
        return cast(extract("epoch", func.clock_timestamp()), Double)
    return cast((func.julianday("now") - _UNIX_EPOCH_JULIAN_DAY) * 86400.0, Double)


@dataclass(frozen=True, slots=True)
class _Level:
    """One ceiling as a transaction reads it: committed spend (0 once its period ended), the period's
    end, what open holds count on it, and whether it is known at all (an unknown restorable level is
    rebuilt from the ledger, not taken as zero)."""

    committed: float
    until: float
    held: float
    known: bool

    @property
    def used(self) -> float:
        return self.committed + self.held


_ABSENT = _Level(0.0, 0.0, 0.0, known=False)


def _longest_by_key(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """The largest value given for each key: ceilings sharing a key are one level."""
    longest: dict[str, float] = {}
    for key, value in pairs:
        longest[key] = max(longest.get(key, value), value)
    return longest


class SqlReservations:
    """Implements the core's `Reservations` on the key store's database (SQLite file or PostgreSQL).

    One transaction per call: `reserve` and `settle` each lock their ceilings, read, decide and write in
    it. `engine` is the key store's; the tables come with the migrations (0006). `cleanup_interval` is
    the seconds between this process's clean-ups of what nobody can ask about any more.
    """

    def __init__(self, engine: AsyncEngine, *, cleanup_interval: float = CLEANUP_INTERVAL) -> None:
        self._engine = engine
        self._cleanup_interval = cleanup_interval
        dialect = engine.dialect.name
        self._sqlite = dialect == "sqlite"
        self._insert = sqlite.insert if self._sqlite else postgresql.insert
        self._clock = _clock(dialect)
        self._next_cleanup = 0.0
        # SQLite: one writer at a time in this process. Other processes still wait on the database's
        # lock, but this process's transactions queue here instead of polling for it (SQLite's busy
        # handler sleeps between tries, up to 100 ms a time: 200 callers at once would take seconds).
        self._writer = asyncio.Lock() if self._sqlite else None

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        if amount < 0 or not ttl > 0:
            raise ValueError("reserve takes an amount >= 0 and a ttl > 0")
        periods = _longest_by_key((c.key, c.ttl) for c in ceilings)
        async with self._transaction() as conn:
            now, forget_at = await self._lock_and_find(conn, periods, reservation_id)
            if forget_at is not None and forget_at > now:
                raise ValueError(f"reservation {reservation_id!r} already exists")
            levels = await self._levels(conn, periods, now)
            unknown = [c.key for c in ceilings if c.restorable and not levels[c.key].known]
            if unknown:
                await conn.rollback()  # nothing to keep (on PostgreSQL, a commit would wait for a flush)
                return Admission(False, refused_key=unknown[0], unknown=tuple(dict.fromkeys(unknown)))
            refused = [c for c in ceilings if not within_limit(levels[c.key].used + amount, c.limit)]
            if refused:
                waits = [await self._wait(conn, c, levels[c.key], amount, now) for c in refused]
                remaining = tuple(c.limit - levels[c.key].used for c in ceilings)
                await conn.rollback()
                return Admission(False, max(0.0, *waits), refused[0].key, remaining)
            restorable = {c.key for c in ceilings if c.restorable}
            await self._take(conn, reservation_id, periods, restorable, amount, ttl, now, forget_at)
        await self._clean_up_when_due()
        return Admission(True, remaining=tuple(c.limit - levels[c.key].used - amount for c in ceilings))

    async def settle(self, reservation_id: str, actual: float) -> Mapping[str, float]:
        if actual < 0:
            raise ValueError("settle takes an actual cost >= 0")
        async with self._transaction() as conn:
            rows = (
                await conn.execute(
                    select(HOLD_CEILINGS.c.key, HOLD_CEILINGS.c.period, HOLD_CEILINGS.c.restorable).where(
                        HOLD_CEILINGS.c.hold_id == reservation_id
                    )
                )
            ).all()
            now = await self._lock(conn, {row.key: 0.0 for row in rows})
            levels = await self._levels(conn, [row.key for row in rows], now)  # before the hold goes
            if not await self._close(conn, reservation_id, now):
                await conn.rollback()
                return {}  # unknown, forgotten, or closed already (perhaps just now, by another worker)
            after: dict[str, float] = {}
            for key, period, restorable in rows:
                level = levels[key]
                if restorable and not level.known:
                    # lost: rebuilt from the ledger, which has this spend; recreating it would hide the rest
                    continue
                if period > now:  # a period that has ended has nothing left to protect
                    after[key] = level.committed + actual
                    await conn.execute(
                        update(LEVELS)
                        .where(LEVELS.c.key == key)
                        .values(committed=after[key], until=max(level.until, period))
                    )
                else:
                    after[key] = level.committed
            return after

    async def release(self, reservation_id: str) -> None:
        async with self._transaction() as conn:
            await self._close(conn, reservation_id, None)

    async def level(self, key: str) -> tuple[float, float]:
        async with self._connection() as conn:
            now = float(await conn.scalar(select(self._clock)) or 0.0)
            level = (await self._levels(conn, [key], now))[key]
        return (level.committed, level.held)

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        if not ttl > 0:
            raise ValueError("restore takes a ttl > 0")
        async with self._transaction() as conn:
            now = await self._lock(conn, {key: 0.0})
            if if_absent and (await self._levels(conn, [key], now))[key].known:
                await conn.rollback()
                return False
            await conn.execute(
                update(LEVELS)
                .where(LEVELS.c.key == key)
                .values(committed=committed, until=now + ttl, kept=True)
            )
            return True

    # --- the steps ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise SharedStateUnavailableError(f"shared state (SQL) failed: {type(exc).__name__}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction, committed when the block ends (unless the block rolled it back: a refusal
        changes nothing worth keeping), rolled back when it raises. On SQLite it takes the write lock at
        once: a read followed by a write would otherwise find another worker's write in between and
        fail instead of waiting."""
        async with contextlib.AsyncExitStack() as stack:
            if self._writer is not None:
                await stack.enter_async_context(self._writer)
            conn = await stack.enter_async_context(self._connection())
            if self._sqlite:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()

    async def _lock(self, conn: AsyncConnection, keys: Iterable[str]) -> float:
        """Lock each key's level row (made when missing), in key order; the database's time after."""
        now, _ = await self._lock_and_find(conn, keys, None)
        return now

    async def _lock_and_find(
        self, conn: AsyncConnection, keys: Iterable[str], hold_id: str | None
    ) -> tuple[float, float | None]:
        """`_lock`, and in the same statement when the hold `hold_id` may be forgotten (`None`: no such
        hold): one round trip fewer for `reserve`, which must refuse an id that is known."""
        ordered = sorted(set(keys))
        forget_at = select(HOLDS.c.forget_at).where(HOLDS.c.id == hold_id).scalar_subquery()
        if not ordered:
            row = (await conn.execute(select(self._clock, forget_at))).one()
            return float(row[0]), row[1]
        upsert = self._insert(LEVELS).values(
            [{"key": key, "committed": 0.0, "until": 0.0, "kept": False} for key in ordered]
        )
        # A no-op update, for its row lock: a plain DO NOTHING would lock nothing it did not insert.
        upsert = upsert.on_conflict_do_update(index_elements=[LEVELS.c.key], set_={"kept": LEVELS.c.kept})
        rows = (await conn.execute(upsert.returning(self._clock, forget_at))).all()
        return float(max(row[0] for row in rows)), rows[0][1]

    async def _levels(self, conn: AsyncConnection, keys: Iterable[str], now: float) -> dict[str, _Level]:
        """Each key's level as `now` sees it: lapsed and closed holds do not count, ended spend is 0."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        live_holds = (
            select(HOLD_CEILINGS.c.key, func.sum(HOLDS.c.amount).label("held"), func.count().label("n"))
            .join(HOLDS, HOLDS.c.id == HOLD_CEILINGS.c.hold_id)
            .where(HOLD_CEILINGS.c.key.in_(wanted), HOLDS.c.closed.is_(False), HOLDS.c.expires > now)
            .group_by(HOLD_CEILINGS.c.key)
            .subquery()
        )
        query = (
            select(
                LEVELS.c.key,
                LEVELS.c.committed,
                LEVELS.c.until,
                LEVELS.c.kept,
                live_holds.c.held,
                live_holds.c.n,
            )
            .select_from(LEVELS.outerjoin(live_holds, live_holds.c.key == LEVELS.c.key))
            .where(LEVELS.c.key.in_(wanted))
        )
        levels = dict.fromkeys(wanted, _ABSENT)
        for key, committed, until, kept, held, holds in await conn.execute(query):
            live = until > now
            spent = committed if live else 0.0
            known = bool(holds) or (live and (spent != 0 or kept))
            levels[key] = _Level(spent, until, float(held or 0.0) if holds else 0.0, known)
        return levels

    async def _wait(
        self, conn: AsyncConnection, ceiling: Ceiling, level: _Level, amount: float, now: float
    ) -> float:
        """Until the holds in the way lapse, else until the period ends (`ceiling.ttl` when the amount
        alone is over the limit)."""
        if not level.known:
            return ceiling.ttl
        lifetime = level.until - now if level.until > now else ceiling.ttl
        if not within_limit(level.committed + amount, ceiling.limit):
            return lifetime
        # the holds in the way: most settle sooner, but they lapse by then at the latest
        holds = await conn.execute(
            select(HOLDS.c.amount, HOLDS.c.expires)
            .join(HOLD_CEILINGS, HOLD_CEILINGS.c.hold_id == HOLDS.c.id)
            .where(HOLD_CEILINGS.c.key == ceiling.key, HOLDS.c.closed.is_(False), HOLDS.c.expires > now)
            .order_by(HOLDS.c.expires)
        )
        held = level.held
        for hold_amount, expires in holds:
            held -= hold_amount
            if within_limit(level.committed + held + amount, ceiling.limit):
                return float(expires - now)
        return lifetime

    async def _take(
        self,
        conn: AsyncConnection,
        reservation_id: str,
        periods: Mapping[str, float],
        restorable: set[str],
        amount: float,
        ttl: float,
        now: float,
        stale: float | None,
    ) -> None:
        """Hold `amount` on every key (for its longest period), lapsing after `ttl`; extend the levels."""
        if stale is not None:  # a forgotten hold under this id, not cleaned up yet
            await conn.execute(delete(HOLDS).where(HOLDS.c.id == reservation_id))
        ends = {key: now + seconds for key, seconds in periods.items()}
        hold = {
            "id": reservation_id,
            "amount": amount,
            "expires": now + ttl,
            "forget_at": max(now + ttl, *ends.values()),  # kept while a late settle could still commit
            "closed": False,
        }
        try:
            await conn.execute(HOLDS.insert().values(hold))
        except IntegrityError as exc:  # another worker reserved this id a moment ago
            raise ValueError(f"reservation {reservation_id!r} already exists") from exc
        if not ends:
            return
        await conn.execute(
            HOLD_CEILINGS.insert(),
            [
                {"hold_id": reservation_id, "key": key, "period": end, "restorable": key in restorable}
                for key, end in ends.items()
            ],
        )
        period = bindparam("end", type_=Double)
        await conn.execute(
            update(LEVELS)
            .where(LEVELS.c.key == bindparam("level"))
            .values(
                committed=case(
                    (LEVELS.c.until > now, LEVELS.c.committed), else_=0.0
                ),  # an ended period's spend
                until=case((LEVELS.c.until > period, LEVELS.c.until), else_=period),
            ),
            [{"level": key, "end": end} for key, end in ends.items()],
        )

    async def _close(self, conn: AsyncConnection, reservation_id: str, now: float | None) -> bool:
        """Close the hold unless closed or forgotten; whether it was closed now. A closed hold is kept
        until it would have lapsed, so its id is not reserved again meanwhile."""
        clock: ColumnElement[float] | float = self._clock if now is None else now
        closed = await conn.execute(
            update(HOLDS)
            .where(HOLDS.c.id == reservation_id, HOLDS.c.closed.is_(False), HOLDS.c.forget_at > clock)
            .values(closed=True, forget_at=HOLDS.c.expires)
        )
        return bool(closed.rowcount)

    async def _clean_up_when_due(self) -> None:
        """Delete forgotten holds, then levels whose period ended with no hold left on them; rows another
        transaction holds are skipped (PostgreSQL), so this never waits on the hot path's locks."""
        if time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + self._cleanup_interval
        holds, levels = HOLDS.alias("forgotten"), LEVELS.alias("ended")
        forgotten = select(holds.c.id).where(holds.c.forget_at <= self._clock)
        referenced = exists().where(HOLD_CEILINGS.c.key == levels.c.key)
        ended = select(levels.c.key).where(levels.c.until <= self._clock, ~referenced)
        async with self._transaction() as conn:
            await conn.execute(
                delete(HOLDS).where(HOLDS.c.id.in_(forgotten.with_for_update(skip_locked=True)))
            )
            await conn.execute(
                delete(LEVELS).where(LEVELS.c.key.in_(ended.with_for_update(skip_locked=True)))
            )


def budget_holds(settings: Settings, shared: SharedState, engine: AsyncEngine) -> Reservations:
    """Where budgets hold and commit: the shared state's reservations (Redis; or this process's memory,
    the fastest, when it serves alone), else the database every worker or replica shares."""
    alone = settings.server.workers == 1 and settings.limits.expected_replicas == 1
    in_memory = engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")
    if settings.redis_url or alone or in_memory:  # an in-memory database is one process's anyway
        return shared.reservations
    return SqlReservations(engine)
