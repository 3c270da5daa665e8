"""Structured logs: one JSON object per line on stdout, the request id on every line of a request.

Stdlib logging with an orjson formatter keeps the hot path cheap; a context variable set by the request
middleware stamps the request id onto every record logged while that request runs. Values that look like
credentials are scrubbed before a line is written, so a key pasted into an error never reaches a log.
"""

from __future__ import annotations

import contextvars
import logging
import math
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
_MAX_LAYOUTS = 256
_CLEAN_TEXT_LENGTH = 100  # longer texts (bodies, errors) rarely repeat: not worth remembering
_MAX_CLEAN_TEXTS = 4096


def scrub(text: str) -> str:
    """Replace anything that looks like a credential with a marker.

    Every shape `_SECRET` matches starts with one of four literal, case-sensitive prefixes, so a text
    holding none of them (nearly every field of nearly every line) is returned without running the
    regex: four substring searches cost a fifth of one `sub`.
    """
    if "sk-" in text or "fm-" in text or "Bearer" in text or "AIza" in text:
        return _SECRET.sub("[REDACTED]", text)
    return text


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, message, request id, extra fields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Which of a record's attributes are extra fields depends only on which it has, in what order
        # (one layout per call site's `extra=`): worked out once per layout, not once per line.
        self._layouts: dict[tuple[str, ...], tuple[str, ...]] = {}
        # `ts` up to the second, for the second it names: `strftime` once a second, not once a line.
        # One tuple, replaced whole, so a second is never paired with another second's text.
        self._second: tuple[int, str] = (-1, "")
        # Short texts `scrub` left alone: most fields repeat line after line (model, provider, key
        # alias, status), and a set lookup is a fraction of `scrub`'s four substring searches.
        # Only clean texts are kept, so no credential is held here.
        self._clean: set[str] = set()

    def format(self, record: logging.LogRecord) -> str:
        clean = self._clean
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message if message in clean else self._scrub(message),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        attrs = record.__dict__
        for key in self._extras(attrs):
            value = attrs[key]
            if isinstance(value, str) and value not in clean:
                value = self._scrub(value)
            line[key] = value
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()

    def _extras(self, attrs: dict[str, Any]) -> tuple[str, ...]:
        """The names of the record's own fields (not `LogRecord`'s, not private), in their order."""
        layout = tuple(attrs)
        extras = self._layouts.get(layout)
        if extras is None:
            if len(self._layouts) >= _MAX_LAYOUTS:  # records built by hand, each of its own shape
                self._layouts.clear()
            extras = tuple(key for key in layout if key not in _STANDARD_ATTRS and not key.startswith("_"))
            self._layouts[layout] = extras
        return extras

    def _scrub(self, text: str) -> str:
        """`scrub(text)`, remembering a short text it left as it was."""
        scrubbed = scrub(text)
        if scrubbed is text and len(text) <= _CLEAN_TEXT_LENGTH:
            if len(self._clean) >= _MAX_CLEAN_TEXTS:
                self._clean.clear()
            self._clean.add(text)
        return scrubbed

    def _timestamp(self, record: logging.LogRecord) -> str:
        """UTC to the millisecond, `2025-01-31T12:00:00.123Z`."""
        created = record.created
        second = math.floor(created)  # the second `gmtime` names
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)))
        return f"{cached[1]}.{int(record.msecs):03d}Z"


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
    # Neither format prints a record's thread or process, and finding their names is a good part of
    # what building each record costs; the process owns its logging once it has called this.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def log_request(fields: Mapping[str, object]) -> None:
    """Write the one summary line of a finished request.

    What `Logger.info("request", extra=fields)` does, less its costs per line: the stack walk (the
    caller it finds is always this function, so it is named outright, for a handler that prints
    `%(funcName)s`) and `makeRecord`'s key-by-key copy of `extra` (the same refusal of a field that
    would overwrite a record attribute, tested with one set operation). Filters and handlers get the
    same record as before.
    """
    if not _ACCESS.isEnabledFor(logging.INFO):
        return
    record = _ACCESS.makeRecord(
        _ACCESS.name,
        logging.INFO,
        _CALLER.co_filename,
        _CALLER.co_firstlineno,
        "request",
        (),
        None,
        "log_request",
    )
    attrs = record.__dict__
    if "message" in fields or "asctime" in fields or not attrs.keys().isdisjoint(fields):
        clash = next(key for key in fields if key in ("message", "asctime") or key in attrs)
        raise KeyError(f"Attempt to overwrite {clash!r} in LogRecord")
    attrs.update(fields)
    _ACCESS.handle(record)


_ACCESS = logging.getLogger("ferryman.access")
_CALLER = log_request.__code__
