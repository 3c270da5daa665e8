"""Rate limits are 64-bit: `rpm_limit` and `tpm_limit` of keys and teams become BIGINT on PostgreSQL.

PostgreSQL's INTEGER stops at 2**31 - 1, so a tokens-per-minute limit of a trillion could not be stored.
SQLite's INTEGER holds 64 bits already, and the models keep INTEGER there (`tables.Rate`), so SQLite has
nothing to change: rebuilding its tables to rename a type would only risk the foreign keys.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = [(table, column) for table in ("teams", "api_keys") for column in ("rpm_limit", "tpm_limit")]


def _widens() -> bool:
    return op.get_bind().dialect.name != "sqlite"


def upgrade() -> None:
    """Widen the rate-limit columns to BIGINT (an in-place type change: every INTEGER fits)."""
    if not _widens():
        return
    for table, column in _COLUMNS:
        op.alter_column(table, column, existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=True)


def downgrade() -> None:
    """Back to INTEGER; refused by PostgreSQL while a stored limit is past 2**31 - 1 (lower it first)."""
    if not _widens():
        return
    for table, column in _COLUMNS:
        op.alter_column(table, column, existing_type=sa.BigInteger, type_=sa.Integer, existing_nullable=True)
