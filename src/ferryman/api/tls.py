"""Serving HTTPS: the certificate uvicorn serves, checked at start-up and reloaded when its files change.

uvicorn builds its `ssl.SSLContext` once, in `Config.load()`, inside each worker's event loop. The
factory here builds that same context and, in the same loop, starts a task that checks the files'
modification times every `reload_seconds`; on a change it loads the new chain into the live context.
New handshakes then present the new certificate; connections already open keep the one they began
with, so a rotation (cert-manager renewing a Kubernetes secret) drops nothing. A half-written or
mismatched pair is logged and the old certificate kept until the files are right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from ferryman.settings import TlsSettings

log = logging.getLogger("ferryman.tls")

FileStamp = tuple[tuple[int, int, int], ...]  # (inode, size, mtime_ns) of each file


def certificate_problems(tls: TlsSettings) -> list[tuple[str, str]]:
    """Why the configured certificate and key cannot be served (none: they load together)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        return [("server.tls", f"cannot load {_pair(tls)}: {exc}")]
    return []


@dataclass(slots=True)
class CertificateReloader:
    """Loads the certificate files into `context` again whenever they change."""

    context: ssl.SSLContext
    tls: TlsSettings
    _stamp: FileStamp = field(init=False, default=())
    _failed: FileStamp = field(init=False, default=())

    def __post_init__(self) -> None:
        self._stamp = self._read_stamp()

    def check(self) -> bool:
        """Reload if the files changed since the last load; True when a new certificate is in use."""
        stamp = self._read_stamp()
        if stamp in (self._stamp, self._failed):
            return False
        try:
            _load_checked(self.context, self.tls)
        except (ssl.SSLError, OSError) as exc:
            # Often a rotation caught between its two writes: the next change is tried again.
            self._failed = stamp
            log.warning("keeping the current certificate: cannot load %s: %s", _pair(self.tls), exc)
            return False
        self._stamp, self._failed = stamp, ()
        log.info("reloaded the TLS certificate from %s", self.tls.cert_file)
        return True

    async def run(self) -> None:
        """Check every `reload_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(self.tls.reload_seconds)
            self.check()

    def _read_stamp(self) -> FileStamp:
        paths = [self.tls.cert_file] + ([self.tls.key_file] if self.tls.key_file else [])
        stamps = []
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError:  # mid-rotation (a symlink swapped, a file replaced): try at the next tick
                return self._stamp
            stamps.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return tuple(stamps)


@dataclass(slots=True)
class ReloadingContextFactory:
    """uvicorn's `ssl_context_factory`: its default context, kept current by a `CertificateReloader`.

    A plain picklable object, so each worker process of `--workers N` gets its own and watches the files.
    """

    tls: TlsSettings
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)

    def __call__(
        self, config: uvicorn.Config, default_factory: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        """Build the context and, in the serving loop, start watching the files for it."""
        context = default_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls.reload_seconds > 0:
            with contextlib.suppress(RuntimeError):  # no running loop: served without reloads
                task = asyncio.get_running_loop().create_task(CertificateReloader(context, self.tls).run())
                self._tasks.add(task)  # a reference, or the task could be collected mid-sleep
        return context

    def __getstate__(self) -> TlsSettings:
        return self.tls  # the tasks belong to this process's loop

    def __setstate__(self, tls: TlsSettings) -> None:
        self.tls = tls
        self._tasks = set()


def _load_checked(context: ssl.SSLContext, tls: TlsSettings) -> None:
    """Load the files into the live `context` only once a copy of them loads into a scratch one.

    OpenSSL sets the certificate before it checks the key against it, so a failed load would leave
    the live context with a certificate and no key to match, and every new handshake would fail.
    A private copy also keeps the files from changing between the check and the load.
    """
    with tempfile.TemporaryDirectory(prefix="ferryman-tls-") as directory:
        cert = Path(directory, "cert.pem")
        cert.write_bytes(Path(tls.cert_file).read_bytes())
        key = None
        if tls.key_file:
            key = Path(directory, "key.pem")
            key.write_bytes(Path(tls.key_file).read_bytes())
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        context.load_cert_chain(cert, key)


def _pair(tls: TlsSettings) -> str:
    return f"{tls.cert_file} and {tls.key_file}" if tls.key_file else tls.cert_file
