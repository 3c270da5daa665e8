"""Structured logs: one JSON object per line on stdout, the request id on every line of a request.

Stdlib logging with an orjson formatter keeps the hot path cheap; a context variable set by the request
middleware stamps the request id onto every record logged while that request runs. Values that look like
credentials are scrubbed before a line is written, so a key pasted into an error never reaches a log.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ferryman_request_id", default=None
)

# Keys look like `sk-…`, `sk-ant-…`, `fm-…`, `AIza…`, or follow `Bearer `.
_SECRET = re.compile(
    r"(Bearer\s+[A-Za-z0-9._~+/=-]{8,}|\b(?:sk|fm)-[A-Za-z0-9_-]{8,}|\bAIza[0-9A-Za-z_-]{20,})"
)
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def scrub(text: str) -> str:
    """Replace anything that looks like a credential with a marker."""
    return _SECRET.sub("[REDACTED]", text)


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                line[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route every `ferryman.*` logger to `stream` (stdout) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger("ferryman")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def log_request(fields: Mapping[str, object]) -> None:
    """Write the one summary line of a finished request."""
    logging.getLogger("ferryman.access").info("request", extra=dict(fields))
