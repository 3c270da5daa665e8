"""`last_used_at` without a write per request: note keys in memory, flush them in one batch a minute.

A batch the database refuses is kept and written by the next flush, merged with the uses noted since
(the newest time of each key wins), so a database outage delays `last_used_at` but never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from ferryman.errors import StoreUnavailableError

log = logging.getLogger("ferryman.store.last_used")


class UseLedger(Protocol):
    """Where last uses are written (the key repository)."""

    async def mark_used(self, uses: Mapping[str, datetime]) -> None:
        """Record each key's last use; StoreUnavailableError when the database cannot take them."""
        ...


class LastUsedRecorder:
    """Collects used key ids and writes them every `interval` seconds (and once more at shutdown)."""

    def __init__(self, ledger: UseLedger, interval: float = 60.0) -> None:
        self._ledger = ledger
        self._interval = interval
        self._pending: dict[str, float] = {}  # key id → epoch seconds of its latest use
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """How many keys wait to be written."""
        return len(self._pending)

    def note(self, key_id: str) -> None:
        """Remember that `key_id` was used now (no I/O: the hot path calls this)."""
        self._pending[key_id] = time.time()

    def start(self) -> None:
        """Begin flushing in the background."""
        self._task = asyncio.create_task(self._run(), name="ferryman-last-used")

    async def flush(self) -> None:
        """Write every noted key's last use in one batch; on failure keep the batch for the next flush."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self._ledger.mark_used({key_id: _utc(at) for key_id, at in batch.items()})
        except StoreUnavailableError:
            self._keep(batch)
            log.warning("could not record last use of %d keys; retrying at the next flush", len(batch))

    def _keep(self, batch: dict[str, float]) -> None:
        """Put a failed batch back under the uses noted while it was being written; newest wins."""
        for key_id, at in batch.items():
            self._pending[key_id] = max(at, self._pending.get(key_id, at))

    async def aclose(self) -> None:
        """Stop the background task and write what is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
