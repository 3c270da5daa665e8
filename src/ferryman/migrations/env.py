"""Alembic's entry point: migrate on the connection `ferryman.store.migrate` hands over (online only)."""

from __future__ import annotations

from alembic import context

from ferryman.store.tables import Base


def run_migrations() -> None:
    """Run the pending revisions inside the caller's transaction and lock."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `ferryman db upgrade`, which supplies the connection")
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
