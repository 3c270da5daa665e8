"""The SQL schema of teams, keys, the spend ledger, budget holds and the audit log, as SQLAlchemy 2 tables.

This is the *current* shape, used by queries; the migrations in `ferryman.migrations` are its history
and must reach the same shape. Timestamps are stored in UTC and always read back timezone-aware, so
SQLite (which drops the zone) and PostgreSQL behave alike. A few objects live outside this metadata
because they exist on one dialect only (`outside_metadata` names them, for schema comparisons).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC; a naive value is taken to be UTC already."""
        if value is None:
            return None
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """SQLite hands back naive values: they were written as UTC."""
        if value is None:
            return None
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Money = Numeric(18, 6, asdecimal=False)
# Rates are 64-bit: a tokens-per-minute limit passes 2**31 easily, and PostgreSQL's INTEGER refuses it.
# SQLite's INTEGER is 64-bit already, so there it stays INTEGER (and its tables need no rebuild).
Rate = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """The declarative base of the key store's tables."""

    metadata = MetaData(naming_convention=NAMING)


class TeamRow(Base):
    """A team: its own model allow-list, limits and budgets bound all of its keys."""

    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    alias: Mapped[str | None] = mapped_column(String(200))
    models: Mapped[list[str] | None] = mapped_column(JSON)
    rpm_limit: Mapped[int | None] = mapped_column(Rate)
    tpm_limit: Mapped[int | None] = mapped_column(Rate)
    max_parallel: Mapped[int | None] = mapped_column(Integer)
    daily_budget_usd: Mapped[float | None] = mapped_column(Money)
    monthly_budget_usd: Mapped[float | None] = mapped_column(Money)
    end_user_daily_budget_usd: Mapped[float | None] = mapped_column(Money)
    end_user_monthly_budget_usd: Mapped[float | None] = mapped_column(Money)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    blocked: Mapped[bool] = mapped_column(Boolean)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class KeyRow(Base):
    """A virtual key: only the SHA-256 of its secret is stored, never the secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    alias: Mapped[str | None] = mapped_column(String(200))
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id"), index=True)
    models: Mapped[list[str] | None] = mapped_column(JSON)
    rpm_limit: Mapped[int | None] = mapped_column(Rate)
    tpm_limit: Mapped[int | None] = mapped_column(Rate)
    max_parallel: Mapped[int | None] = mapped_column(Integer)
    daily_budget_usd: Mapped[float | None] = mapped_column(Money)
    monthly_budget_usd: Mapped[float | None] = mapped_column(Money)
    end_user_daily_budget_usd: Mapped[float | None] = mapped_column(Money)
    end_user_monthly_budget_usd: Mapped[float | None] = mapped_column(Money)
    # end user -> {"daily_usd", "monthly_usd"}: their own budget, instead of the defaults
    end_user_budgets: Mapped[dict[str, dict[str, float | None]] | None] = mapped_column(JSON)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    blocked: Mapped[bool] = mapped_column(Boolean)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    role: Mapped[str | None] = mapped_column(String(16))  # admin role: NULL (none), viewer, admin


# Dollars per request reach a millionth of a cent (ten tokens of a cheap model), so the ledger keeps
# twelve decimals; NUMERIC on PostgreSQL makes every sum exact, whatever order rows are added in.
Cost = Numeric(24, 12, asdecimal=False)

LEDGER_PARTITION_PREFIX = "spend_ledger_"
"""PostgreSQL partitions of `spend_ledger` (`spend_ledger_default`, `spend_ledger_y2026m11`, …): made by
the migration and by the writer, ahead of each month; they are the parent's storage, not tables of
their own, so they are not in the metadata."""

SQLITE_LEDGER_UNIQUE = "uq_spend_ledger_request_id"
"""SQLite's unique index on `spend_ledger.request_id`. PostgreSQL cannot have it: a unique index of a
partitioned table must contain the partition key, so there the primary key `(request_id, at)` and the
writer's look-up before inserting keep request ids unique."""


def outside_metadata(name: str | None, type_: str, parent_names: object) -> bool:
    """Whether a reflected object is one of those kept out of the metadata on purpose (Alembic's
    `include_name` hook wants the opposite: pass `not outside_metadata(...)`)."""
    if name is None:
        return False
    if type_ == "table":
        return name.startswith(LEDGER_PARTITION_PREFIX)
    return type_ == "index" and name == SQLITE_LEDGER_UNIQUE


class LedgerRow(Base):
    """One request's final cost, written once per request id (`core.shared_state.SpendEntry`).

    `cost_usd` is NULL for an unpriced request, never 0. On PostgreSQL the table is partitioned by
    month on `at`, so months of history stay cheap to keep, to query and to drop; the primary key has to
    include `at` for that. Text columns are unbounded: a value too long for a column would fail every
    batch that carries it, so `store.sql_ledger` bounds values itself, the same way everywhere.
    """

    __tablename__ = "spend_ledger"
    __table_args__ = (
        # BRIN: a few pages summarise a month of append-ordered timestamps (a B-tree on SQLite).
        Index("ix_spend_ledger_at", "at", postgresql_using="brin"),
        {"postgresql_partition_by": "RANGE (at)"},
    )

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    key_id: Mapped[str | None] = mapped_column(Text)
    team_id: Mapped[str | None] = mapped_column(Text)
    end_user: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    deployment: Mapped[str] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost_usd: Mapped[float | None] = mapped_column(Cost)
    estimated: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class _DailySums:
    """The sums both rollups keep. `cost_usd` sums the priced requests only; `unpriced_requests` counts
    the others."""

    requests: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Cost)
    unpriced_requests: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class DailySpendRow(_DailySums, Base):
    """The ledger summed per UTC day, key, team, end user, model and provider: what reports read.

    Written in the same transaction as the ledger rows it sums, and only for rows that transaction
    actually inserted, so it always equals the ledger. An absent key, team or end user is stored as ''
    rather than NULL: NULLs are distinct in a unique index, so a NULL column would let a replayed batch
    start a second row instead of adding to the first (and '' keeps the key a plain B-tree both SQLite
    and PostgreSQL can name in `ON CONFLICT`, unlike a `COALESCE` expression index). Ids are never '',
    and the writer stores an empty end user as none.
    """

    __tablename__ = "spend_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    team_id: Mapped[str] = mapped_column(Text, primary_key=True)
    end_user: Mapped[str] = mapped_column(Text, primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, primary_key=True)


class KeyDailySpendRow(_DailySums, Base):
    """`spend_daily` without the end user, written alongside it: what reports and usage read unless
    they ask about end users.

    End users are the one dimension without a bound (a consumer app has thousands), so a key's month in
    `spend_daily` can have nearly as many rows as the ledger; here it has at most one row per day, model
    and provider, and reports by key, team, model or day never pay for end-user cardinality.
    """

    __tablename__ = "spend_daily_by_key"
    __table_args__ = (  # a key's or a team's own usage (`GET /v1/usage`, rebuilding budgets)
        Index("ix_spend_daily_by_key_key_id", "key_id", "day"),
        Index("ix_spend_daily_by_key_team_id", "team_id", "day"),
    )

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    team_id: Mapped[str] = mapped_column(Text, primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, primary_key=True)


# Budget reservations in SQL (`store.sql_reservations`), for workers sharing a database without Redis.
# Times are seconds since the epoch on the database's clock, as doubles: every comparison is made in one
# transaction against one reading of that clock, so replicas with skewed clocks still agree. Amounts
# are doubles too: the in-process and Redis backends add floats, and `within_limit` forgives rounding.


class BudgetLevelRow(Base):
    """A ceiling's committed spend until its period ends (`until`); `kept` once restored from the ledger.

    A row is a lock as much as a level: every reservation that changes a level locks its row first, in
    key order. A level is *known* while its period is live and it has spend or was restored, or while an
    open hold is on it; a row that is neither is the same as no row (and is deleted by the next clean-up).
    """

    __tablename__ = "budget_levels"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    committed: Mapped[float] = mapped_column(Double)
    until: Mapped[float] = mapped_column(Double)
    kept: Mapped[bool] = mapped_column(Boolean)


class BudgetHoldRow(Base):
    """One reservation: its amount, when it lapses (`expires`), and when it may be forgotten.

    An open hold is kept past its lapse while a late settle could still commit (`forget_at`: its longest
    period); a closed one until it would have lapsed, so its id is not reserved twice meanwhile.
    """

    __tablename__ = "budget_holds"
    __table_args__ = (Index("ix_budget_holds_forget_at", "forget_at"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    amount: Mapped[float] = mapped_column(Double)
    expires: Mapped[float] = mapped_column(Double)
    forget_at: Mapped[float] = mapped_column(Double)
    closed: Mapped[bool] = mapped_column(Boolean)


class BudgetHoldCeilingRow(Base):
    """A hold's ceiling (once per key): the period its settle commits to, and whether it is restorable."""

    __tablename__ = "budget_hold_ceilings"
    __table_args__ = (Index("ix_budget_hold_ceilings_key", "key"),)

    hold_id: Mapped[str] = mapped_column(ForeignKey("budget_holds.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    period: Mapped[float] = mapped_column(Double)
    restorable: Mapped[bool] = mapped_column(Boolean)


# Autoincrementing: SQLite makes only an INTEGER primary key its rowid alias (PostgreSQL: BIGSERIAL).
AuditSeq = BigInteger().with_variant(Integer(), "sqlite")


class AuditRow(Base):
    """One admin action (`store.audit`): who did what to which resource, from where, and how it ended.

    Written before the action runs (`status` NULL) and completed after it; a row left with NULL status
    is an action whose outcome could not be recorded. Never a secret or a request body: the target is
    the route's path parameters only.
    """

    __tablename__ = "admin_audit"
    __table_args__ = (Index("ix_admin_audit_at", "at"),)

    seq: Mapped[int] = mapped_column(AuditSeq, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor_id: Mapped[str | None] = mapped_column(Text)
    actor_alias: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[dict[str, str]] = mapped_column(JSON)
    status: Mapped[int | None] = mapped_column(Integer)
    client_ip: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)


# Models and deployments added at runtime through the admin API (`store.model_store`), merged with the
# config file's. A deployment's credential is sealed (`store.encryption`) and bound to its row's id.


class RuntimeModelRow(Base):
    """A model added through the admin API: its settings as the config file would spell them, without
    deployments (they are rows of their own)."""

    __tablename__ = "runtime_models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RuntimeDeploymentRow(Base):
    """One deployment of a runtime model; `api_key_sealed` is AES-GCM ciphertext, never plain text."""

    __tablename__ = "runtime_deployments"
    __table_args__ = (Index("ix_runtime_deployments_model", "model_name", "position"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("runtime_models.name", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    api_key_sealed: Mapped[str | None] = mapped_column(Text)
    api_key_hint: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RuntimeCatalogRow(Base):
    """One row whose `version` every change to runtime models bumps, in the same transaction: what
    replicas poll (one indexed read) to learn that their model set is stale."""

    __tablename__ = "runtime_catalog"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)
