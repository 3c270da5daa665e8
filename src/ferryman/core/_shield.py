"""Giving back what a cancelled request held: work that must finish even while its task is cancelled.

A client that hangs up cancels its request's task, but the request's rate-limit slot, quota and stage
exits must still be released. `Shield.run` runs such work in a task of its own and waits for it under
`asyncio.shield`; if the waiting is cancelled again, the work finishes on its own, and the `Shield`
keeps a reference to it meanwhile (asyncio keeps only weak references to tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

log = logging.getLogger("ferryman.background")


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


class Background:
    """Work a request starts and does not wait for, finished in the background and waited for at
    shutdown (`drain`), so none is lost when the process stops; failures are logged, as nobody awaits
    them. The rate-limit stage gives a remote store's slot back this way: the answer need not wait a
    round trip to Redis for a release no one reads."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[None]] = set()

    def spawn(self, work: Awaitable[None], what: str) -> None:
        """Start `work` (named `what` in the log should it fail)."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(lambda done: self._ended(done, what))

    def _ended(self, task: asyncio.Future[None], what: str) -> None:
        self._running.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background %s failed", what, exc_info=error)

    async def drain(self) -> None:
        """Wait until no work is left (work started meanwhile included)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
