"""The runtime model store on SQLite and a real PostgreSQL: every write bumps the catalog version,
names are unique, deployments keep their order, and a reseal rewrites only what it is given."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from ferryman.errors import ConflictError, NotFoundError
from ferryman.store.database import open_engine
from ferryman.store.encryption import CredentialCipher
from ferryman.store.migrate import upgrade_schema
from ferryman.store.model_store import ModelStore, StoredDeployment, StoredModel, credential_row


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ModelStore]:
    await upgrade_schema(database_url)
    engine = open_engine(database_url)
    yield ModelStore(engine)
    async with engine.begin() as conn:  # the module shares one database: leave it empty
        await conn.execute(text("DELETE FROM runtime_deployments"))
        await conn.execute(text("DELETE FROM runtime_models"))
    await engine.dispose()


def model(name: str, *deployments: StoredDeployment) -> StoredModel:
    return StoredModel(name, {"strategy": "priority"}, deployments)


def deployment(dep_id: str, sealed: str | None = None) -> StoredDeployment:
    return StoredDeployment(
        dep_id, {"provider": "fake", "model": dep_id}, sealed, "…abcd" if sealed else None
    )


async def test_writes_bump_the_version_and_keep_the_order(store: ModelStore) -> None:
    start = await store.version()
    await store.create(model("m", deployment("dep_b"), deployment("dep_a")))
    assert await store.version() == start + 1
    stored = await store.get("m")
    assert stored is not None and [d.id for d in stored.deployments] == ["dep_b", "dep_a"]
    assert stored.spec == {"strategy": "priority"}
    await store.replace(model("m", deployment("dep_a")))
    assert await store.version() == start + 2
    assert [m.name for m in await store.list_models()] == ["m"]
    await store.delete("m")
    assert await store.version() == start + 3
    assert await store.get("m") is None and await store.list_models() == []


async def test_names_are_unique_and_missing_models_are_not_found(store: ModelStore) -> None:
    await store.create(model("taken", deployment("dep_1")))
    version = await store.version()
    with pytest.raises(ConflictError):
        await store.create(model("taken", deployment("dep_2")))
    assert await store.version() == version  # the refused write changed nothing
    with pytest.raises(NotFoundError):
        await store.delete("ghost")
    with pytest.raises(NotFoundError):
        await store.replace(model("ghost", deployment("dep_3")))


async def test_a_reseal_rewrites_the_rows_it_is_given_a_new_token_for(store: ModelStore) -> None:
    old, new = os.urandom(32), os.urandom(32)
    sealed = CredentialCipher(old).encrypt("sk-reseal-me", credential_row("r", "dep_r"))
    await store.create(model("r", deployment("dep_r", sealed), deployment("dep_plain")))
    cipher = CredentialCipher(new, [old])

    def reseal(row: str, token: str) -> str | None:
        return None if cipher.is_current(token) else cipher.encrypt(cipher.decrypt(token, row), row)

    assert await store.reseal(reseal) == 1
    stored = await store.get("r")
    assert stored is not None
    token = stored.deployments[0].api_key_sealed
    assert token is not None and cipher.is_current(token)
    assert CredentialCipher(new).decrypt(token, credential_row("r", "dep_r")) == "sk-reseal-me"
    assert stored.deployments[1].api_key_sealed is None
    assert await store.reseal(reseal) == 0  # nothing left under the old key
