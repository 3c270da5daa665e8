"""The store's boundary: a database that cannot answer is `StoreUnavailableError` (503), never a driver's
or SQLAlchemy's own exception, so nothing above the store needs to know which database is behind it."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import ferryman.api
from ferryman.errors import FerrymanError, StoreUnavailableError
from ferryman.store.cache import GrantCache
from ferryman.store.database import open_engine
from ferryman.store.invalidation import LocalInvalidation
from ferryman.store.records import KeySettings
from ferryman.store.service import KeyService
from tests.processes import free_port


@pytest.fixture(params=["postgresql-refused", "sqlite-without-schema"])
async def broken_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyService]:
    """A PostgreSQL nobody listens for (the driver raises OSError), or a SQLite database whose tables
    do not exist (SQLAlchemy raises OperationalError)."""
    url = (
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/ferryman"
        if request.param == "postgresql-refused"
        else f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    )
    cache = GrantCache()
    service = KeyService(static={}, cache=cache, bus=LocalInvalidation(cache), engine=open_engine(url))
    yield service
    await service.aclose()


async def test_resolve_raises_store_unavailable(broken_store: KeyService) -> None:
    with pytest.raises(StoreUnavailableError) as refused:
        await broken_store.resolve("fm-" + "z" * 43)
    error = refused.value
    assert isinstance(error, FerrymanError)
    assert (error.status, error.code) == (503, "key_store_unavailable")
    assert isinstance(error.__cause__, Exception)  # the driver's error stays attached, for the log


async def test_admin_operations_raise_store_unavailable(broken_store: KeyService) -> None:
    with pytest.raises(StoreUnavailableError):
        await broken_store.repository.list_keys()
    with pytest.raises(StoreUnavailableError):
        await broken_store.create_key(KeySettings(alias="never-stored"))
    with pytest.raises(StoreUnavailableError):
        await broken_store.revoke_key("k1")


def test_no_api_module_imports_a_database_library() -> None:
    """Storage errors are the store's to translate; the edge handles only Ferryman's errors."""
    offenders = []
    for module in Path(ferryman.api.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{module.name}: {n}" for n in names if n.split(".")[0] in {"sqlalchemy", "asyncpg"}
            ]
    assert offenders == []
