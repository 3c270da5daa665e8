"""A cap on the size of a request's head (request line and headers): past it, 431 and the connection closed.

httptools buffers a header until it is complete and sets no limit of its own: a client could send one
header of a gigabyte and the gateway would hold it all (measured: a 20 MB header was accepted). The cap
counts the bytes that arrive while a request's head is still unfinished, so memory per connection stays
under the cap plus one socket read, before anything reaches the app.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_BODY = b"Request header fields too large."


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the cap."""


_CAP_ATTRIBUTE = "ferryman_max_header_bytes"


def cap_request_heads(config: uvicorn.Config, max_header_bytes: int) -> uvicorn.Config:
    """Serve `config` with httptools and a cap on each request's head. The cap rides on the config
    itself, since uvicorn pickles the config (not our closure) into each worker process."""
    config.http = CappedHttpToolsProtocol
    setattr(config, _CAP_ATTRIBUTE, max_header_bytes)
    return config


class CappedHttpToolsProtocol(HttpToolsProtocol):
    """Counts a head two ways: its URL and headers as the parser hands them over (a whole head in
    one read), and the reads that leave a head unfinished (one header arriving over many reads,
    which the parser buffers whole before handing it over)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._cap: int = getattr(config, _CAP_ATTRIBUTE)
        self._in_head, self._parsed, self._unfinished, self._too_large = True, 0, 0, False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._parsed, self._unfinished = True, 0, 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > self._cap:
            self._too_large = True
            raise _HeadTooLarge  # the parser stops; uvicorn answers through send_400_response

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._unfinished += len(data)  # may include the end of the previous request: safe side
            if self._unfinished > self._cap:
                self._too_large = True
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        self.logger.warning("request head over %d bytes refused with 431", self._cap)
        head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_BODY)
        self.transport.write(head + _BODY)
        self.transport.close()
