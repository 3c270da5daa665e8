"""Keeping referenced secrets current while the gateway runs: on an interval and on SIGHUP.

A refresh reads every reference again off the event loop and swaps changed values into their holders,
so the next request uses the new value and requests in flight finish with the one they started with.
A reference that cannot be read keeps its last good value and is logged (by reference, never value).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence

from ferryman.errors import SecretError
from ferryman.secret_refs.config import secret_values
from ferryman.secret_refs.reference import SecretReference, SecretValue
from ferryman.secret_refs.sources import SecretResolver

log = logging.getLogger("ferryman.secret_refs")


class SecretRefresher:
    """Re-reads the `SecretValue`s of one settings tree; `start()` runs it until `aclose()`."""

    def __init__(
        self,
        values: Sequence[tuple[str, SecretValue]],
        interval_seconds: float,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._values = list(values)
        self._interval = interval_seconds
        self._resolver = SecretResolver(os.environ if environ is None else environ)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sighup = False

    @classmethod
    def for_settings(cls, settings: object, interval_seconds: float) -> SecretRefresher:
        """A refresher for every reference-backed secret in `settings`."""
        return cls(secret_values(settings), interval_seconds)

    @property
    def paths(self) -> list[str]:
        """The key paths this refresher keeps current."""
        return [path for path, _ in self._values]

    async def refresh(self) -> list[str]:
        """Read every reference again now; the key paths whose value changed."""
        if not self._values:
            return []
        async with self._lock:
            references = [holder.reference for _, holder in self._values]
            results = await asyncio.to_thread(self._resolver.resolve_all, references)
            return [path for path, holder in self._values if self._apply(path, holder, results)]

    def request_refresh(self) -> None:
        """Ask the running loop for a refresh soon (what SIGHUP does)."""
        self._wake.set()

    async def start(self) -> None:
        """Refresh every `interval_seconds` (0: only when asked) and on SIGHUP, in the background."""
        self._install_sighup()
        if self._values:
            self._task = asyncio.create_task(self._run(), name="ferryman-secret-refresher")

    async def aclose(self) -> None:
        """Stop refreshing and give SIGHUP back its default meaning."""
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval or None)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # a bug here must not end refreshing for the life of the process
                log.exception("secret refresh failed")

    def _apply(
        self, path: str, holder: SecretValue, results: Mapping[SecretReference, str | SecretError]
    ) -> bool:
        result = results[holder.reference]
        fields = {"config_path": path, "reference": holder.reference.text}
        if isinstance(result, SecretError):
            log.warning("secret not refreshed; keeping its last value: %s", result, extra=fields)
            return False
        if not holder.replace(result):
            return False
        log.info("secret rotated: %s", path, extra=fields)
        return True

    def _install_sighup(self) -> None:
        # Signal handlers belong to the main thread's loop (`ferryman serve`); a gateway run in another
        # thread (tests, embedding) refreshes on its interval only. uvicorn handles SIGINT and SIGTERM.
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._sighup = True

    def _on_sighup(self) -> None:
        log.info("SIGHUP: refreshing %d secret reference(s)", len(self._values))
        self.request_refresh()
