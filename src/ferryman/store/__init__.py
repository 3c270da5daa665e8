"""Durable and shared state: teams and virtual keys in SQL, their cache and cross-replica invalidation.

`service.KeyService` is the entry point; `tables` is the schema, `repository` the queries, `cache` the
in-process grant cache, `invalidation` the Redis pub/sub that keeps replicas' caches honest, and `migrate`
runs the Alembic migrations shipped in `ferryman.migrations`.
"""
