"""The spend ledger (one row per request id) and its daily rollups, which reports read.

On PostgreSQL `spend_ledger` is partitioned by month on `at`, with a DEFAULT partition so that a row
for a month nobody created a partition for still lands somewhere; the writer creates each month's
partition ahead of time (`store.sql_ledger`). On SQLite it is a plain table, and a unique index on
`request_id` keeps request ids unique (PostgreSQL cannot have that index on a partitioned table).
`spend_daily` sums the ledger per day, key, team, end user, model and provider; `spend_daily_by_key`
the same without the end user, so reports that do not ask about end users read far fewer rows.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COST = sa.Numeric(24, 12, asdecimal=False)


def _tokens(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger, nullable=False, server_default=sa.text("0"))


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Create `spend_ledger` (partitioned on PostgreSQL), `spend_daily` and `spend_daily_by_key`."""
    op.create_table(
        "spend_ledger",
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Text, nullable=True),
        sa.Column("team_id", sa.Text, nullable=True),
        sa.Column("end_user", sa.Text, nullable=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("deployment", sa.Text, nullable=False),
        *(
            _tokens(name)
            for name in (
                "input_tokens",
                "output_tokens",
                "cached_tokens",
                "cache_write_tokens",
                "reasoning_tokens",
            )
        ),
        sa.Column("cost_usd", _COST, nullable=True),
        sa.Column("estimated", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.PrimaryKeyConstraint("request_id", "at", name="pk_spend_ledger"),
        postgresql_partition_by="RANGE (at)",
    )
    op.create_index("ix_spend_ledger_at", "spend_ledger", ["at"], postgresql_using="brin")
    if _postgres():
        op.execute("CREATE TABLE spend_ledger_default PARTITION OF spend_ledger DEFAULT")
    else:
        op.create_index("uq_spend_ledger_request_id", "spend_ledger", ["request_id"], unique=True)
    _create_rollup("spend_daily", ("key_id", "team_id", "end_user", "model", "provider"))
    _create_rollup("spend_daily_by_key", ("key_id", "team_id", "model", "provider"))
    op.create_index("ix_spend_daily_by_key_key_id", "spend_daily_by_key", ["key_id", "day"])
    op.create_index("ix_spend_daily_by_key_team_id", "spend_daily_by_key", ["team_id", "day"])


def _create_rollup(name: str, key: tuple[str, ...]) -> None:
    """A daily rollup keyed by `day` and the text columns `key` ('' for none, never NULL)."""
    op.create_table(
        name,
        sa.Column("day", sa.Date, nullable=False),
        *(sa.Column(column, sa.Text, nullable=False) for column in key),
        *(
            sa.Column(column, sa.BigInteger, nullable=False)
            for column in ("requests", "input_tokens", "output_tokens", "cached_tokens")
        ),
        sa.Column("cost_usd", _COST, nullable=False),
        sa.Column("unpriced_requests", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("day", *key, name=f"pk_{name}"),
    )


def downgrade() -> None:
    """Drop the three tables (on PostgreSQL, dropping the parent drops every partition with it)."""
    op.drop_table("spend_daily_by_key")
    op.drop_table("spend_daily")
    op.drop_table("spend_ledger")
