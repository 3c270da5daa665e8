"""`last_used_at` survives a database that fails a flush: the batch is kept, merged and written next time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ferryman.errors import StoreUnavailableError
from ferryman.store.database import open_engine
from ferryman.store.last_used import LastUsedRecorder
from ferryman.store.migrate import upgrade_schema
from ferryman.store.records import KeySettings
from ferryman.store.repository import KeyRepository


class FailsOnce:
    """A ledger whose first write fails as the repository's do when the database is down."""

    def __init__(self) -> None:
        self.writes: list[dict[str, datetime]] = []
        self.failed = False

    async def mark_used(self, uses: Mapping[str, datetime]) -> None:
        if not self.failed:
            self.failed = True
            raise StoreUnavailableError("The key store is unavailable; retry shortly.")
        self.writes.append(dict(uses))


def clock(monkeypatch: pytest.MonkeyPatch, epoch: float) -> datetime:
    monkeypatch.setattr("ferryman.store.last_used.time.time", lambda: epoch)
    return datetime.fromtimestamp(epoch, UTC)


async def test_a_failed_batch_is_kept_and_merged_with_newer_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = FailsOnce()
    recorder = LastUsedRecorder(ledger)
    first = clock(monkeypatch, 1_000.0)
    recorder.note("a")
    recorder.note("b")
    await recorder.flush()  # the database is down
    assert ledger.writes == [] and recorder.pending == 2
    later = clock(monkeypatch, 1_060.0)
    recorder.note("b")  # used again meanwhile: the newer time wins
    recorder.note("c")
    await recorder.flush()
    assert ledger.writes == [{"a": first, "b": later, "c": later}]
    assert recorder.pending == 0
    await recorder.flush()  # nothing left over, nothing written twice
    assert len(ledger.writes) == 1


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ferryman.db'}"
    await upgrade_schema(url)
    engine = open_engine(url)
    yield engine
    await engine.dispose()


async def last_used(engine: AsyncEngine, key_id: str) -> datetime | None:
    repository = KeyRepository(engine)
    return (await repository.get_key(key_id)).last_used_at


async def test_a_real_sql_error_loses_nothing(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is briefly not there (as when the database refuses the statement): the use is written
    by the next flush, with its own time."""
    repository = KeyRepository(engine)
    key = await repository.create_key(KeySettings(alias="flushed-late"), "fm-" + "x" * 43)
    recorder = LastUsedRecorder(repository)
    used = clock(monkeypatch, 2_000_000_000.0)
    recorder.note(key.id)
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE api_keys RENAME TO api_keys_away"))
    await recorder.flush()
    assert recorder.pending == 1
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE api_keys_away RENAME TO api_keys"))
    await recorder.flush()
    assert recorder.pending == 0
    assert await last_used(engine, key.id) == used


async def test_a_late_batch_never_moves_last_used_backwards(engine: AsyncEngine) -> None:
    """Another replica already recorded a newer use; an older batch (a retry) must not undo it."""
    repository = KeyRepository(engine)
    key = await repository.create_key(KeySettings(), "fm-" + "y" * 43)
    newer, older = datetime(2030, 1, 2, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
    await repository.mark_used({key.id: newer})
    await repository.mark_used({key.id: older})
    assert await last_used(engine, key.id) == newer
