"""The embedded default's spend ledger: a synced append-only journal in front of the SQL ledger.

Committing every request's spend to SQLite on its own costs ≈4 ms of CPU (a transaction and two rollup
upserts); appending one line to a file and syncing it costs ≈0.05 ms, and is as durable: once
`append` returns, a crash of the process — or of the machine — loses nothing. A line that comes
alone is synced on the spot (the lowest latency). Under load — appends closer together than
`GROUPING_GAP` — the sync runs in a thread, off the event loop, and is shared (group commit): lines
appended while one sync runs are written and synced together by the next, so one `fdatasync`
acknowledges many requests and the event loop serves others meanwhile. A background task moves
the journal into SQL in batches (idempotently: SQL keeps one row per request id), then deletes what it
moved. Each worker process writes its own journal; at start-up a worker claims (by renaming) and
replays any journal a stopped process left behind, so nothing waits for the process that wrote it.

"Left behind" is decided by a lock, not by a name: a process holds an exclusive `flock` on each journal
it writes or moves until that file is gone, and the kernel drops it when the process dies (SIGKILL
included). A starting worker claims only the files it can lock, so it never takes a journal that a
live sibling (`--workers N`, or one the supervisor restarted) is still appending to; it used to, and
whatever the sibling appended afterwards went to an unlinked file. A new journal is locked under a
hidden name before it is renamed into view, so no other worker can see it unlocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ferryman.core.shared_state import SpendEntry
from ferryman.errors import FerrymanError
from ferryman.store.redis_state import decode_spend_entry, encode_spend_line
from ferryman.store.sql_ledger import SqlLedger

log = logging.getLogger("ferryman.store.journal")
DRAIN_INTERVAL = 1.0  # seconds between moves into SQL while entries keep coming
"""Each move costs a transaction, its look-ups and two rollup upserts whatever its size, so a second's
worth at once costs far less CPU than five moves of a fifth (it was 0.2 s). Durability does not depend
on it (an entry is on disk when `append` returns); it is how far SQL may lag behind this process's
spend for readers that do not `flush` it first (`/admin/spend`, another worker)."""
GROUPING_GAP = 0.002  # seconds: appends closer together than this go through the group commit
RETRY_MAX = 10.0  # seconds: the longest wait between tries while the database refuses


class JournalLedger:
    """Implements the core's `Ledger`: durable on `append`, in SQL a moment later."""

    def __init__(
        self, directory: Path, durable: SqlLedger, *, on_backlog: Callable[[int], None] = lambda n: None
    ) -> None:
        self._dir = directory
        self._durable = durable
        self._on_backlog = on_backlog
        # The pid for people reading the directory; the random part, so a pid reused (a container's
        # restarted process, a shared volume) never names another process's journal.
        self._path = directory / f"spend-{os.getpid()}-{uuid.uuid4().hex[:8]}.journal"
        self._fd = -1
        self._rotated: tuple[Path, int] | None = None  # moved out of the way, still locked, not in SQL yet
        self._written = 0  # lines appended since the journal was last rotated
        self._pending: list[bytes] = []  # lines waiting for the next group commit
        self._waiters: list[asyncio.Future[None]] = []  # their appends, answered once synced
        self._committer: asyncio.Task[None] | None = None  # the group commit running, if any
        self._file = asyncio.Lock()  # a commit's write and sync, or a rotation's swap of the file
        self._last_append = -math.inf  # monotonic time of the last append, to tell load from a lone line
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set only to stop: a drain round every DRAIN_INTERVAL otherwise
        self._moving = asyncio.Lock()  # one move into SQL at a time (the drain task, or a flush)
        self._closing = False

    async def start(self) -> None:
        """Replay what earlier processes left, open this process's journal, start moving it into SQL."""
        self._dir.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self._dir.glob("spend-*.journal*")):
            claimed = _claim(leftover, self._dir / f"{leftover.name}.{os.getpid()}.replaying")
            if claimed is not None:
                try:
                    await self._move(claimed[0])
                finally:
                    os.close(claimed[1])
        self._fd = self._open_journal()
        self._task = asyncio.create_task(self._drain_forever(), name="ferryman-spend-journal")

    async def append(self, entry: SpendEntry) -> bool:
        """Write and sync one line, with whatever else is waiting; True once it is on disk (duplicates
        are dropped when the line reaches SQL). The drain task moves it on its next round."""
        line, now = encode_spend_line(entry), time.monotonic()
        lone, self._last_append = now - self._last_append >= GROUPING_GAP, now
        if lone and self._committer is None:  # nothing to share a sync with: no thread hop either
            _write_synced(self._fd, line)  # (the file is only rotated between commits, never mid-call)
            self._written += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(line)
        self._waiters.append(waiter)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit(), name="ferryman-spend-journal-commit")
        await waiter  # a caller cancelled meanwhile leaves its line to be written all the same
        return True

    async def _commit(self) -> None:
        """Group commits until no line waits: each writes and syncs every line queued before it."""
        try:
            while self._pending:
                pending, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                try:
                    async with self._file:  # the file cannot be rotated away mid-write
                        await asyncio.to_thread(_write_synced, self._fd, b"".join(pending))
                        self._written += len(pending)
                except OSError as exc:  # none of these lines is acknowledged; the next ones may be
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                except BaseException:  # cancelled (shutdown): no waiting line is acknowledged (the ones
                    for waiter in waiters + self._waiters:  # queued meanwhile stay for a later commit)
                        waiter.cancel()
                    self._waiters = []
                    raise
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._committer = None

    async def flush(self) -> None:
        """Move this process's journal into SQL now (before reading SQL as the whole truth)."""
        await self._drain()

    async def entries(self, *, since: datetime | None = None) -> list[SpendEntry]:
        """What SQL holds (the journal's last lines follow within `DRAIN_INTERVAL`)."""
        return await self._durable.entries(since=since)

    async def aclose(self) -> None:
        """Move what is left into SQL (if the database answers), then close the journal (what is still
        there is unlocked, for the next process to claim)."""
        self._closing = True
        if self._committer is not None:  # appends acknowledged before the last move into SQL
            await asyncio.shield(self._committer)
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._rotated is not None:
            os.close(self._rotated[1])
            self._rotated = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def path(self) -> Path:
        """This process's journal, where `append` writes."""
        return self._path

    async def _drain_forever(self) -> None:
        delay = DRAIN_INTERVAL
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DRAIN_INTERVAL)
            self._wake.clear()
            try:
                await self._drain()
                delay = DRAIN_INTERVAL
            except (FerrymanError, OSError) as exc:  # the journal keeps the entries: say so, retry
                log.warning("spend journal not moved into SQL yet (%s); retrying", type(exc).__name__)
                if self._closing:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._closing:
                return

    async def _drain(self) -> None:
        """Rotate the journal (appends go to a fresh file at once), move the rotated ones into SQL."""
        async with self._moving:
            await self._rotate_and_move()

    async def _rotate_and_move(self) -> None:
        """Move the journal rotated earlier (the database refused it) first, then rotate and move the
        current one: at most one rotated file waits, however long the database is away.

        Lines appended while a move runs wait for the next round, unless that move was a backlog's:
        under steady traffic something is always appended meanwhile, and chasing it moved files back to
        back (a rotation, a directory sync, a transaction and its sync each) instead of once a round."""
        backlog = self._rotated is not None
        if not backlog and self._written:
            async with self._file:  # between group commits: every line is in one file or the other
                rotated = self._dir / f"{self._path.name}.{uuid.uuid4().hex[:8]}.moving"
                os.rename(self._path, rotated)
                self._rotated = (rotated, self._fd)  # its descriptor keeps it locked until it is moved
                self._fd = self._open_journal()
                self._written = 0
        if self._rotated is not None:
            path, fd = self._rotated
            await self._move(path)
            os.close(fd)
            self._rotated = None
            if backlog and self._written:  # the current journal waited behind the backlog: it too
                await self._rotate_and_move()
                return
        self._on_backlog(0)

    def _open_journal(self) -> int:
        """A new, empty journal at `self._path`, locked before any other worker can see it."""
        hidden = self._dir / f".{self._path.name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows the hidden name: taken at once
        os.rename(hidden, self._path)
        _sync_directory(self._dir)  # the name itself survives a machine crash before the first append
        return fd

    async def _move(self, path: Path) -> None:
        """Every entry of `path` into SQL in one batch, then the file is gone (a failure keeps it)."""
        content = await asyncio.to_thread(path.read_bytes)
        lines = [line for line in content.splitlines() if line.strip()]
        self._on_backlog(len(lines))
        entries = []
        for number, line in enumerate(lines):
            try:
                entries.append(decode_spend_entry(line))
            except (ValueError, KeyError, TypeError):
                # A line torn by a crash mid-write (only ever the last one): it was never acknowledged.
                log.error("spend journal %s: unreadable line %d skipped", path.name, number + 1)
        if entries:
            await self._durable.append_many(entries)
        await asyncio.to_thread(path.unlink)


def _write_synced(fd: int, data: bytes) -> None:
    """All of `data` appended to `fd`, then synced (a thread's work: it waits on the disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fdatasync(fd)


def _claim(leftover: Path, claimed: Path) -> tuple[Path, int] | None:
    """Lock `leftover` and rename it to `claimed`: (its new path, the locked descriptor), or None when it
    is not left over — its writer still holds it, or another worker claimed (and moved) it first."""
    try:
        fd = os.open(leftover, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Locked, but is the name still this file? Its writer may have rotated it away, or a worker
        # moved and unlinked it while we waited to open it.
        if os.fstat(fd).st_ino != leftover.stat().st_ino:
            raise FileNotFoundError(leftover)
        leftover.rename(claimed)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return claimed, fd


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
