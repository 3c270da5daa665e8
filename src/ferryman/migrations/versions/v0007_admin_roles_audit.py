"""Admin roles on keys, and the admin audit log.

`api_keys.role` is the key's admin role: NULL (none: an API key only), `viewer` or `admin`. It is
nullable and added in place, so every existing key keeps its meaning (no admin access) and neither
SQLite nor PostgreSQL rewrites the table. `admin_audit` is new: one row per admin action that changes
something (or was refused), with who, what, on which resource, from where and how it ended; it is
created empty, and dropping it on downgrade loses the audit history (export it first).

Revision ID: 0007
Revises: 0006
Create Date: 2025-01-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the nullable role column; create the audit table and its index on time."""
    op.add_column("api_keys", sa.Column("role", sa.String(16), nullable=True))
    op.create_table(
        "admin_audit",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Text, nullable=True),
        sa.Column("actor_alias", sa.Text, nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.JSON, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("client_ip", sa.Text, nullable=True),
        sa.Column("request_id", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_admin_audit"),
    )
    op.create_index("ix_admin_audit_at", "admin_audit", ["at"])


def downgrade() -> None:
    """Drop the audit table (its history is lost) and the role column (every key loses its role)."""
    op.drop_index("ix_admin_audit_at", table_name="admin_audit")
    op.drop_table("admin_audit")
    op.drop_column("api_keys", "role")
