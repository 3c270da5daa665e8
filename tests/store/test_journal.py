"""The embedded spend journal: durable on append, moved into SQL in batches, replayed after a crash."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ferryman.core.shared_state import SpendEntry
from ferryman.errors import StoreUnavailableError
from ferryman.store.database import open_engine
from ferryman.store.journal import DRAIN_INTERVAL, JournalLedger
from ferryman.store.migrate import ensure_schema
from ferryman.store.redis_state import encode_spend_entry
from ferryman.store.sql_ledger import SqlLedger


def entry(request_id: str, cost: float = 0.001) -> SpendEntry:
    return SpendEntry(
        request_id=request_id,
        at=datetime.now(UTC),
        model="m",
        provider="p",
        deployment="d",
        key_id="k",
        team_id=None,
        end_user=None,
        input_tokens=1,
        output_tokens=2,
        cached_tokens=0,
        cost_usd=cost,
    )


@pytest.fixture
async def sql(tmp_path: Path) -> SqlLedger:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ferryman.db'}"
    engine = open_engine(url)
    await ensure_schema(url, auto_migrate=True, engine=engine)
    yield SqlLedger(engine)  # type: ignore[misc]
    await engine.dispose()


async def test_an_append_is_on_disk_at_once_and_in_sql_after_the_drain(
    tmp_path: Path, sql: SqlLedger
) -> None:
    journal = JournalLedger(tmp_path / "data", sql)
    await journal.start()
    try:
        assert await journal.append(entry("a"))
        files = list((tmp_path / "data").glob("spend-*.journal"))
        assert len(files) == 1 and b'"request_id": "a"' in files[0].read_bytes().replace(b'":"', b'": "')
        await asyncio.sleep(DRAIN_INTERVAL + 0.5)  # the drain runs every DRAIN_INTERVAL by itself, unasked
        assert [e.request_id for e in await sql.entries()] == ["a"]
    finally:
        await journal.aclose()
    assert not list((tmp_path / "data").glob("*.moving"))


async def test_concurrent_appends_share_syncs_and_each_returns_only_once_synced(
    tmp_path: Path, sql: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = JournalLedger(tmp_path / "data", sql)
    await journal.start()
    synced: list[bytes] = []  # the journal's whole content at each sync
    real_sync = os.fdatasync

    def sync(fd: int) -> None:
        real_sync(fd)
        synced.append(journal.path.read_bytes())

    monkeypatch.setattr(os, "fdatasync", sync)
    names = [f"r{number}" for number in range(50)]

    async def append(name: str) -> tuple[str, int]:
        await journal.append(entry(name))
        return name, len(synced)  # how many syncs had happened when it was acknowledged

    try:
        acknowledged = await asyncio.gather(*(append(name) for name in names))
    finally:
        await journal.aclose()
    assert 1 <= len(synced) < len(names)  # group commits: one sync acknowledged several appends
    for name, syncs in acknowledged:  # every append's line was on disk at a sync before it returned
        assert syncs >= 1 and f'"{name}"'.encode() in synced[syncs - 1].replace(b'": "', b'":"')
    assert sorted(e.request_id for e in await sql.entries()) == sorted(names)


async def test_a_journal_left_by_a_crashed_process_is_replayed_exactly_once(
    tmp_path: Path, sql: SqlLedger
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    lines = [encode_spend_entry(entry(name)) for name in ("x", "y")]
    # A dead process's journal: two whole lines and one torn by the crash (never acknowledged).
    (data / "spend-99999.journal").write_text("\n".join(lines) + '\n{"request_id": "z", "at')
    journal = JournalLedger(data, sql)
    await journal.start()
    await journal.append(entry("x"))  # a replay of an id already recorded adds nothing
    await journal.flush()
    await journal.aclose()
    assert sorted(e.request_id for e in await sql.entries()) == ["x", "y"]
    assert list(data.iterdir()) == [journal.path]  # the replayed journal is gone; ours is left, empty


async def test_while_sql_refuses_the_journal_keeps_every_entry(tmp_path: Path, sql: SqlLedger) -> None:
    class Refusing:
        def __init__(self) -> None:
            self.down = True

        async def append_many(self, entries):  # type: ignore[no-untyped-def]
            if self.down:
                raise StoreUnavailableError("database down")
            return await sql.append_many(entries)

        async def entries(self, *, since=None):  # type: ignore[no-untyped-def]
            return await sql.entries(since=since)

    refusing = Refusing()
    backlog: list[int] = []
    journal = JournalLedger(tmp_path / "data", refusing, on_backlog=backlog.append)  # type: ignore[arg-type]
    await journal.start()
    for name in ("p", "q", "r"):
        await journal.append(entry(name))
    with pytest.raises(StoreUnavailableError):
        await journal.flush()
    assert max(backlog) == 3  # the backlog shows while the database is down
    refusing.down = False
    await journal.flush()
    await journal.aclose()
    assert sorted(e.request_id for e in await sql.entries()) == ["p", "q", "r"]
    assert backlog[-1] == 0


async def test_a_starting_worker_never_claims_the_journal_a_live_sibling_is_writing(
    tmp_path: Path, sql: SqlLedger
) -> None:
    """`--workers 2`, or a worker the supervisor restarted: the newcomer replays only what the dead left.
    (It used to rename the sibling's journal too, and the sibling's later appends went to an unlinked
    file.) Two instances in one process lock like two processes: `flock` is per open file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "spend-99999.journal").write_text(encode_spend_entry(entry("dead")) + "\n")
    sibling = JournalLedger(data, sql)
    await sibling.start()  # replays the dead process's journal
    await sibling.append(entry("before"))
    newcomer = JournalLedger(data, sql)
    await newcomer.start()
    try:
        assert sibling.path.exists()  # still its own, in place
        await sibling.append(entry("after"))
        await newcomer.append(entry("newcomer"))
        await sibling.flush()
        await newcomer.flush()
    finally:
        await newcomer.aclose()
        await sibling.aclose()
    assert sorted(e.request_id for e in await sql.entries()) == ["after", "before", "dead", "newcomer"]


async def test_a_journal_the_database_refused_is_moved_before_the_next_and_nothing_piles_up(
    tmp_path: Path, sql: SqlLedger
) -> None:
    """While SQL is away one rotated journal waits (locked) beside the live one, however many rounds."""

    class Refusing:
        down = True

        async def append_many(self, entries):  # type: ignore[no-untyped-def]
            if self.down:
                raise StoreUnavailableError("database down")
            return await sql.append_many(entries)

    refusing = Refusing()
    data = tmp_path / "data"
    journal = JournalLedger(data, refusing)  # type: ignore[arg-type]
    await journal.start()
    try:
        for n in range(3):
            await journal.append(entry(f"r{n}"))
            with pytest.raises(StoreUnavailableError):
                await journal.flush()
        assert len(list(data.glob("spend-*.journal*"))) == 2  # the live one and one rotated
        refusing.down = False
        await journal.flush()
        assert [path.stat().st_size for path in data.glob("spend-*.journal*")] == [0]
    finally:
        await journal.aclose()
    assert sorted(e.request_id for e in await sql.entries()) == ["r0", "r1", "r2"]


async def test_lines_appended_during_a_move_wait_for_the_next_round(tmp_path: Path, sql: SqlLedger) -> None:
    """Under steady traffic something is always appended while a move runs; a round must not chase it
    (it moved files back to back, a rotation, a sync and a transaction each, the whole time)."""

    class Held:
        def __init__(self) -> None:
            self.moving, self.go = asyncio.Event(), asyncio.Event()
            self.batches: list[list[str]] = []

        async def append_many(self, entries):  # type: ignore[no-untyped-def]
            entries = list(entries)
            self.batches.append([e.request_id for e in entries])
            self.moving.set()
            await self.go.wait()
            return await sql.append_many(entries)

    held = Held()
    journal = JournalLedger(tmp_path / "data", held)  # type: ignore[arg-type]
    await journal.start()
    try:
        await journal.append(entry("a"))
        flushing = asyncio.ensure_future(journal.flush())
        await held.moving.wait()
        await journal.append(entry("b"))  # while "a" is being moved
        held.go.set()
        await flushing
        assert held.batches == [["a"]]  # "b" waits in the live journal for the next round
        await journal.flush()
        assert held.batches == [["a"], ["b"]]
    finally:
        await journal.aclose()
    assert sorted(e.request_id for e in await sql.entries()) == ["a", "b"]


async def test_cache_writes_and_reasoning_tokens_go_through_the_journal_and_old_lines_read_as_zero(
    tmp_path: Path, sql: SqlLedger
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    old = json.loads(encode_spend_entry(entry("old")))
    del old["cache_write_tokens"], old["reasoning_tokens"]  # a line written before the fields existed
    (data / "spend-1-0123abcd.journal").write_text(json.dumps(old) + "\n")
    new = dataclasses.replace(entry("new"), cache_write_tokens=7, reasoning_tokens=3)
    journal = JournalLedger(data, sql)
    await journal.start()  # replays the old journal
    try:
        assert await journal.append(new)
        await journal.flush()
    finally:
        await journal.aclose()
    stored = {e.request_id: e for e in await sql.entries()}
    assert stored["new"] == new
    assert (stored["old"].cache_write_tokens, stored["old"].reasoning_tokens) == (0, 0)
