"""Runtime models: models and deployments added through the admin API, and a catalog version to poll.

`runtime_models` holds a model's settings (JSON, as the config file spells them, minus deployments);
`runtime_deployments` one row per deployment, its credential sealed with AES-GCM (`api_key_sealed`)
and only a hint of it in clear; `runtime_catalog` a single row whose `version` each change bumps.
New tables only: created empty, dropped without touching anything else.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    """Create the three tables; the catalog starts at version 0."""
    op.create_table(
        "runtime_models",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("name", name="pk_runtime_models"),
    )
    op.create_table(
        "runtime_deployments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("api_key_sealed", sa.Text, nullable=True),
        sa.Column("api_key_hint", sa.String(8), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["model_name"],
            ["runtime_models.name"],
            name="fk_runtime_deployments_model_name_runtime_models",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_runtime_deployments"),
    )
    op.create_index("ix_runtime_deployments_model", "runtime_deployments", ["model_name", "position"])
    catalog = op.create_table(
        "runtime_catalog",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runtime_catalog"),
    )
    op.bulk_insert(catalog, [{"id": 1, "version": 0}])


def downgrade() -> None:
    """Drop them (runtime models are lost; the config file's are untouched)."""
    op.drop_index("ix_runtime_deployments_model", table_name="runtime_deployments")
    op.drop_table("runtime_deployments")
    op.drop_table("runtime_models")
    op.drop_table("runtime_catalog")
