"""The SQL schema of teams and virtual keys, as SQLAlchemy 2 declarative tables.

This is the *current* shape, used by queries; the migrations in `ferryman.migrations` are its history
and must reach the same shape. Timestamps are stored in UTC and always read back timezone-aware, so
SQLite (which drops the zone) and PostgreSQL behave alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, MetaData, Numeric, String
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
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    blocked: Mapped[bool] = mapped_column(Boolean)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
