"""Alembic revisions, oldest first: the history that `ferryman.store.tables` is the result of."""
