"""`last_used_at` without a write per request: note keys in memory, flush them in one batch a minute."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.exc import SQLAlchemyError

from ferryman.store.records import utc_now
from ferryman.store.repository import KeyRepository

log = logging.getLogger("ferryman.store.last_used")


class LastUsedRecorder:
    """Collects used key ids and writes them every `interval` seconds (and once more at shutdown)."""

    def __init__(self, repository: KeyRepository, interval: float = 60.0) -> None:
        self._repository = repository
        self._interval = interval
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def note(self, key_id: str) -> None:
        """Remember that `key_id` was used now (no I/O: the hot path calls this)."""
        self._pending.add(key_id)

    def start(self) -> None:
        """Begin flushing in the background."""
        self._task = asyncio.create_task(self._run(), name="ferryman-last-used")

    async def flush(self) -> None:
        """Write every noted key's last use in one statement."""
        pending, self._pending = self._pending, set()
        try:
            await self._repository.mark_used(pending, utc_now())
        except SQLAlchemyError as exc:
            log.warning("could not record last use of %d keys: %s", len(pending), exc.__class__.__name__)

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
