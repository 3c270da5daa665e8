"""Giving back what a cancelled request held: work that must finish even while its task is cancelled.

A client that hangs up cancels its request's task, but the request's rate-limit slot, quota and stage
exits must still be released. `Shield.run` runs such work in a task of its own and waits for it under
`asyncio.shield`; if the waiting is cancelled again, the work finishes on its own, and the `Shield`
keeps a reference to it meanwhile (asyncio keeps only weak references to tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable


class Shield:
    """Runs cleanup to the end despite cancellation; one per long-lived owner (pipeline, attempt loop)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[None]] = set()

    async def run(self, work: Awaitable[None]) -> None:
        """Await `work` to its end; a cancellation while waiting leaves it finishing in the background."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
