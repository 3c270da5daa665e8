"""Per-end-user budgets of keys and teams: a default for each end user, and (keys only) explicit ones.

`end_user_daily_budget_usd` / `end_user_monthly_budget_usd` on `teams` and `api_keys` are the default
budget of each end user of the key (of each key, for a team's); `api_keys.end_user_budgets` is JSON,
end user → `{"daily_usd", "monthly_usd"}`, for end users whose own budget replaces the default. Every
column is nullable and added in place, so existing rows keep their meaning (no end-user budget of their
own) and neither SQLite nor PostgreSQL rewrites or rebuilds a table.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_MONEY = sa.Numeric(18, 6, asdecimal=False)
_DEFAULTS = ("end_user_daily_budget_usd", "end_user_monthly_budget_usd")


def upgrade() -> None:
    """Add the nullable columns."""
    for table in ("teams", "api_keys"):
        for column in _DEFAULTS:
            op.add_column(table, sa.Column(column, _MONEY, nullable=True))
    op.add_column("api_keys", sa.Column("end_user_budgets", sa.JSON, nullable=True))


def downgrade() -> None:
    """Drop them again (the end-user budgets they held are lost; SQLite 3.35+ drops in place)."""
    op.drop_column("api_keys", "end_user_budgets")
    for table in ("teams", "api_keys"):
        for column in reversed(_DEFAULTS):
            op.drop_column(table, column)
