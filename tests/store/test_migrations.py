"""Migrations on SQLite and a real PostgreSQL: from empty, from the previous revision with data in it,
concurrently from several replicas, and refused (with the command to run) when `auto_migrate` is off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, DateTime, bindparam, inspect, text
from sqlalchemy.exc import DBAPIError

from ferryman.store.database import open_engine
from ferryman.store.migrate import (
    SchemaBehindError,
    alembic_config,
    ensure_schema,
    head_revision,
    schema_revision,
    upgrade_schema,
)
from ferryman.store.tables import Base, outside_metadata
from tests.store.fixtures import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ferryman.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_admin")) as url:
        yield url


def schema_drift(connection: Connection) -> list[object]:
    """What differs between the database and the models, leaving out the dialect-only objects the models
    leave out on purpose (PostgreSQL's ledger partitions, SQLite's unique request-id index)."""
    opts = {"include_name": lambda name, type_, parents: not outside_metadata(name, type_, parents)}
    return list(compare_metadata(MigrationContext.configure(connection, opts=opts), Base.metadata))


async def test_upgrade_from_empty_reaches_head_and_matches_the_models(empty_database: str) -> None:
    assert await schema_revision(empty_database) is None
    await upgrade_schema(empty_database)
    assert await schema_revision(empty_database) == head_revision() == "0008"
    engine = open_engine(empty_database)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
    finally:
        await engine.dispose()


async def test_upgrade_from_the_previous_revision_keeps_data(empty_database: str) -> None:
    await upgrade_schema(empty_database, "0001")
    assert await schema_revision(empty_database) == "0001"
    engine = open_engine(empty_database)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO api_keys (id, key_hash, key_prefix, metadata, blocked, created_at, updated_at) "
                    "VALUES ('k1', :hash, 'fm-abcdefgh', '{}', false, :now, :now)"
                ).bindparams(bindparam("now", type_=DateTime(timezone=True))),
                {"hash": "a" * 64, "now": datetime(2025, 1, 1, tzinfo=UTC)},
            )
        await upgrade_schema(empty_database)
        assert await schema_revision(empty_database) == "0008"
        async with engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT key_hash, last_used_at FROM api_keys WHERE id = 'k1'"))
            ).one()
            indexes = await conn.run_sync(lambda sync: inspect(sync).get_indexes("api_keys"))
        assert tuple(row) == ("a" * 64, None)
        assert "ix_api_keys_team_id" in {index["name"] for index in indexes}
    finally:
        await engine.dispose()


TRILLION = 10**12  # tokens per minute: past PostgreSQL's INTEGER (2**31 - 1)
NOW = bindparam("now", type_=DateTime(timezone=True))


async def test_rate_limits_hold_64_bit_values_after_0003(empty_database: str) -> None:
    engine = open_engine(empty_database)
    postgres = engine.dialect.name == "postgresql"
    insert_team = text(
        "INSERT INTO teams (id, metadata, blocked, created_at, updated_at, tpm_limit) "
        "VALUES (:id, '{}', false, :now, :now, :tpm)"
    ).bindparams(NOW)
    insert_key = text(
        "INSERT INTO api_keys (id, key_hash, key_prefix, team_id, metadata, blocked, created_at, updated_at, "
        "rpm_limit, tpm_limit) VALUES ('k1', :hash, 'fm-abcdefgh', 't1', '{}', false, :now, :now, 60, :tpm)"
    ).bindparams(NOW)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    try:
        await upgrade_schema(empty_database, "0002")
        async with engine.begin() as conn:
            await conn.execute(insert_team, {"id": "t1", "now": now, "tpm": 2**31 - 1})
            await conn.execute(insert_key, {"hash": "b" * 64, "now": now, "tpm": 2**31 - 1})
        if postgres:  # what 0003 is for
            with pytest.raises(DBAPIError, match="out of int32 range"):
                async with engine.begin() as conn:
                    await conn.execute(insert_team, {"id": "t2", "now": now, "tpm": TRILLION})
        await upgrade_schema(empty_database)
        await engine.dispose()  # fresh connections: asyncpg's prepared statements keep their INTEGER params
        async with engine.begin() as conn:
            await conn.execute(insert_team, {"id": "t2", "now": now, "tpm": TRILLION})
            for widen in (
                "UPDATE teams SET rpm_limit = :big, tpm_limit = :big",
                "UPDATE api_keys SET rpm_limit = :big, tpm_limit = :big",
            ):
                await conn.execute(text(widen), {"big": TRILLION})
        async with engine.connect() as conn:
            teams = (await conn.execute(text("SELECT rpm_limit, tpm_limit FROM teams ORDER BY id"))).all()
            key = (await conn.execute(text("SELECT rpm_limit, tpm_limit, team_id FROM api_keys"))).one()
            assert await conn.run_sync(schema_drift) == []
        assert [tuple(row) for row in teams] == [(TRILLION, TRILLION)] * 2
        assert tuple(key) == (TRILLION, TRILLION, "t1")  # the key kept its row and its team
    finally:
        await engine.dispose()


async def test_replicas_migrating_at_once_are_serialised(empty_database: str) -> None:
    await asyncio.gather(*(upgrade_schema(empty_database) for _ in range(3)))
    assert await schema_revision(empty_database) == head_revision()


async def test_schema_behind_with_auto_migrate_off_names_the_command(empty_database: str) -> None:
    await upgrade_schema(empty_database, "0001")
    with pytest.raises(SchemaBehindError) as refused:
        await ensure_schema(empty_database, auto_migrate=False, config_hint="prod.yaml")
    assert "ferryman db upgrade --config prod.yaml" in refused.value.message
    assert await schema_revision(empty_database) == "0001"  # nothing was changed
    await ensure_schema(empty_database, auto_migrate=True)
    await ensure_schema(empty_database, auto_migrate=False)  # at head: accepted


async def test_0004_adds_the_spend_ledger_partitioned_on_postgresql(empty_database: str) -> None:
    await upgrade_schema(empty_database, "0003")
    await upgrade_schema(empty_database)
    engine = open_engine(empty_database)
    postgres = engine.dialect.name == "postgresql"
    try:
        async with engine.connect() as conn:
            ledger_pk = await conn.run_sync(lambda sync: inspect(sync).get_pk_constraint("spend_ledger"))
            daily_pk = await conn.run_sync(lambda sync: inspect(sync).get_pk_constraint("spend_daily"))
            by_key_pk = await conn.run_sync(
                lambda sync: inspect(sync).get_pk_constraint("spend_daily_by_key")
            )
            columns = await conn.run_sync(lambda sync: inspect(sync).get_columns("spend_ledger"))
            indexes = await conn.run_sync(lambda sync: inspect(sync).get_indexes("spend_ledger"))
            if postgres:
                kind = await conn.scalar(
                    text("SELECT relkind::text FROM pg_class WHERE relname = 'spend_ledger'")
                )
                default = await conn.scalar(
                    text(
                        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c "
                        "WHERE c.relname = 'spend_ledger_default'"
                    )
                )
        assert ledger_pk["constrained_columns"] == ["request_id", "at"]
        rollup_key = ["day", "key_id", "team_id", "end_user", "model", "provider"]
        assert daily_pk["constrained_columns"] == rollup_key
        assert by_key_pk["constrained_columns"] == [c for c in rollup_key if c != "end_user"]
        nullable = {column["name"]: column["nullable"] for column in columns}
        assert nullable["cost_usd"] is True  # NULL is "unpriced", never 0
        assert nullable["reasoning_tokens"] is False and nullable["cache_write_tokens"] is False
        unique = {index["name"] for index in indexes if index["unique"]}
        if postgres:
            assert (kind, default) == ("p", "DEFAULT")  # partitioned, with a default partition
            assert unique == set()  # a unique index must hold the partition key: the PK does
        else:
            assert unique == {"uq_spend_ledger_request_id"}
    finally:
        await engine.dispose()


async def test_0004_downgrades_cleanly(empty_database: str) -> None:
    await upgrade_schema(empty_database)
    engine = open_engine(empty_database)

    def downgrade(sync: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync
        command.downgrade(config, "0003")

    try:
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        assert not any(name.startswith("spend_") for name in tables)
    finally:
        await engine.dispose()
    assert await schema_revision(empty_database) == "0003"


async def test_0005_adds_nullable_end_user_budgets_and_downgrades_cleanly(empty_database: str) -> None:
    await upgrade_schema(empty_database, "0004")
    engine = open_engine(empty_database)
    insert_key = text(
        "INSERT INTO api_keys (id, key_hash, key_prefix, metadata, blocked, created_at, updated_at) "
        "VALUES ('k1', :hash, 'fm-abcdefgh', '{}', false, :now, :now)"
    ).bindparams(NOW)
    columns = ("end_user_daily_budget_usd", "end_user_monthly_budget_usd", "end_user_budgets")

    def downgrade(sync: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync
        command.downgrade(config, "0004")

    try:
        async with engine.begin() as conn:
            await conn.execute(insert_key, {"hash": "c" * 64, "now": datetime(2025, 1, 1, tzinfo=UTC)})
        await upgrade_schema(empty_database)
        async with engine.begin() as conn:
            before = (
                await conn.execute(
                    text(
                        "SELECT end_user_daily_budget_usd, end_user_monthly_budget_usd, end_user_budgets "
                        "FROM api_keys"
                    )
                )
            ).one()
            await conn.execute(
                text(
                    "UPDATE api_keys SET end_user_daily_budget_usd = 0.5, "
                    "end_user_monthly_budget_usd = 999999999999.5, end_user_budgets = :own"
                ),
                {"own": '{"vip": {"daily_usd": 5, "monthly_usd": null}}'},
            )
            after = (
                await conn.execute(
                    text("SELECT end_user_daily_budget_usd, end_user_monthly_budget_usd FROM api_keys")
                )
            ).one()
            team_columns = await conn.run_sync(lambda sync: inspect(sync).get_columns("teams"))
            assert await conn.run_sync(schema_drift) == []
        assert tuple(before) == (None, None, None)  # existing keys keep no end-user budget of their own
        assert tuple(after) == (0.5, 999999999999.5)
        assert {c["name"]: c["nullable"] for c in team_columns if c["name"] in columns} == {
            "end_user_daily_budget_usd": True,
            "end_user_monthly_budget_usd": True,
        }
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            key_columns = await conn.run_sync(lambda sync: inspect(sync).get_columns("api_keys"))
            key_hash = await conn.scalar(text("SELECT key_hash FROM api_keys"))
        assert not {c["name"] for c in key_columns} & set(columns)
        assert key_hash == "c" * 64
    finally:
        await engine.dispose()
    assert await schema_revision(empty_database) == "0004"


async def test_0006_adds_the_budget_reservation_tables_and_downgrades_cleanly(empty_database: str) -> None:
    await upgrade_schema(empty_database, "0005")
    engine = open_engine(empty_database)
    tables = ("budget_levels", "budget_holds", "budget_hold_ceilings")

    def downgrade(sync: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync
        command.downgrade(config, "0005")

    try:
        await upgrade_schema(empty_database)
        async with engine.connect() as conn:
            names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            assert await conn.run_sync(schema_drift) == []
        assert names >= set(tables)
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        assert not names & set(tables)
        assert "spend_ledger" in names
    finally:
        await engine.dispose()


async def test_0007_adds_key_roles_and_the_audit_log_and_downgrades_cleanly(empty_database: str) -> None:
    await upgrade_schema(empty_database, "0006")
    engine = open_engine(empty_database)

    def downgrade(sync: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync
        command.downgrade(config, "0006")

    def key_columns(sync: Connection) -> set[str]:
        return {column["name"] for column in inspect(sync).get_columns("api_keys")}

    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO api_keys (id, key_hash, key_prefix, metadata, blocked, created_at, updated_at) "
                    "VALUES ('k1', :hash, 'fm-abcdefgh', '{}', false, :now, :now)"
                ).bindparams(NOW),
                {"hash": "b" * 64, "now": datetime(2025, 1, 1, tzinfo=UTC)},
            )
        await upgrade_schema(empty_database)
        async with engine.begin() as conn:
            assert await conn.run_sync(schema_drift) == []
            # an existing key keeps its meaning: no admin role
            assert (
                await conn.execute(text("SELECT role FROM api_keys WHERE id = 'k1'"))
            ).scalar_one() is None
            for _ in range(2):  # the sequence numbers itself
                await conn.execute(
                    text(
                        "INSERT INTO admin_audit (at, action, target) VALUES (:now, 'POST /admin/keys', '{}')"
                    ).bindparams(NOW),
                    {"now": datetime(2025, 1, 2, tzinfo=UTC)},
                )
            seqs = (await conn.execute(text("SELECT seq FROM admin_audit ORDER BY seq"))).scalars().all()
        assert len(set(seqs)) == 2
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            columns = await conn.run_sync(key_columns)
        assert "admin_audit" not in names
        assert "role" not in columns
        assert "api_keys" in names
    finally:
        await engine.dispose()
