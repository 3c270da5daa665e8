"""A Vault stand-in on loopback speaking the KV version 2 read API, for hvac to talk to.

No `vault` binary is installable here (not on PyPI, not in apt), so this serves Vault's documented
wire format instead: `GET /v1/<mount>/data/<path>` with `X-Vault-Token`, answering
`{"data": {"data": {...}, "metadata": {...}}}`, 404 `{"errors": []}` for a path with no secret, and
403 `{"errors": ["permission denied"]}` for a missing or wrong token.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


class FakeVault:
    """KV v2 secrets under `mounts`, readable with `token`; `put` writes a new version."""

    def __init__(self, token: str, mounts: tuple[str, ...] = ("secret",)) -> None:
        self.token = token
        self.mounts = mounts
        self.reads: list[str] = []  # request paths, oldest first
        self._secrets: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`: what VAULT_ADDR points at."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def put(self, mount: str, path: str, data: dict[str, Any]) -> None:
        """Write a new version of the secret at `mount`/`path`."""
        with self._lock:
            _, version = self._secrets.get((mount, path), ({}, 0))
            self._secrets[(mount, path)] = (dict(data), version + 1)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _read(self, request_path: str, token: str | None) -> tuple[int, dict[str, Any]]:
        self.reads.append(request_path)
        if token != self.token:
            return 403, {"errors": ["permission denied"]}
        route = request_path.partition("?")[0].removeprefix("/v1/")
        mount, marker, path = route.partition("/data/")
        with self._lock:
            found = self._secrets.get((mount, path)) if marker and mount in self.mounts else None
        if found is None:
            return 404, {"errors": []}
        data, version = found
        metadata = {
            "created_time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "custom_metadata": None,
            "deletion_time": "",
            "destroyed": False,
            "version": version,
        }
        return 200, {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": {"data": data, "metadata": metadata},
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = vault._read(self.path, self.headers.get("X-Vault-Token"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows what matters

        return Handler
