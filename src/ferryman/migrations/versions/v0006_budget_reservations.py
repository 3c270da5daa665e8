"""Budget reservations in SQL (levels, holds, their ceilings) for workers without Redis; rollup token sums.

`budget_levels` is one row per ceiling key (committed spend, its period's end, whether it was restored),
and the row every reservation on that key locks first; `budget_holds` is one row per reservation, and
`budget_hold_ceilings` names its keys. Times are seconds since the epoch on the database's clock. The
tables are new and hold only short-lived state (holds lapse within minutes, levels end with their
budget period), so they are created empty and dropped without loss: budgets rebuild levels from the
ledger. `spend_ledger` has had `cache_write_tokens` and `reasoning_tokens` since 0004 (on the parent
table, which every PostgreSQL partition shares); the daily rollups `spend_daily` and
`spend_daily_by_key` gain their sums here, NOT NULL with a server default of 0: every row written
before summed ledger rows whose counts were 0, so the rollups keep equalling the ledger, and both
SQLite and PostgreSQL add such a column in place, without rewriting the table.

Revision ID: 0006
Revises: 0005
Create Date: 2025-01-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _double(name: str) -> sa.Column[float]:
    return sa.Column(name, sa.Double, nullable=False)


_ROLLUPS = ("spend_daily", "spend_daily_by_key")
_TOKEN_SUMS = ("cache_write_tokens", "reasoning_tokens")


def upgrade() -> None:
    """Create the three tables and their indexes; add the rollups' two sums."""
    for table in _ROLLUPS:
        for column in _TOKEN_SUMS:
            op.add_column(
                table, sa.Column(column, sa.BigInteger, nullable=False, server_default=sa.text("0"))
            )
    op.create_table(
        "budget_levels",
        sa.Column("key", sa.Text, nullable=False),
        _double("committed"),
        _double("until"),
        sa.Column("kept", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_budget_levels"),
    )
    op.create_table(
        "budget_holds",
        sa.Column("id", sa.Text, nullable=False),
        _double("amount"),
        _double("expires"),
        _double("forget_at"),
        sa.Column("closed", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budget_holds"),
    )
    op.create_index("ix_budget_holds_forget_at", "budget_holds", ["forget_at"])
    op.create_table(
        "budget_hold_ceilings",
        sa.Column("hold_id", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        _double("period"),
        sa.Column("restorable", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("hold_id", "key", name="pk_budget_hold_ceilings"),
        sa.ForeignKeyConstraint(
            ["hold_id"],
            ["budget_holds.id"],
            name="fk_budget_hold_ceilings_hold_id_budget_holds",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_budget_hold_ceilings_key", "budget_hold_ceilings", ["key"])


def downgrade() -> None:
    """Drop them (open holds are lost: they lapse anyway; levels are rebuilt from the ledger), and the
    rollups' two sums (the ledger keeps the counts)."""
    op.drop_table("budget_hold_ceilings")
    op.drop_table("budget_holds")
    op.drop_table("budget_levels")
    for table in reversed(_ROLLUPS):
        for column in reversed(_TOKEN_SUMS):
            op.drop_column(table, column)
