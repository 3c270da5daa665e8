"""Alembic migrations of the key store, shipped inside the package; run them with `ferryman db upgrade`."""
