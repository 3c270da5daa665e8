"""The pooled-HTTP base every remote provider builds on (the interface is `core.upstream.Upstream`).

A provider instance serves one deployment. It owns one pooled `aiohttp` session (keep-alive, DNS
cache), so a request never pays for a new connection it could have reused. This module is the one
boundary where transport failures become Ferryman errors:

    asyncio.TimeoutError            → UpstreamTimeoutError      (504)
    aiohttp connection / payload    → UpstreamConnectionError   (502; a certificate that does not verify
                                                                 as `upstream_certificate_invalid`)
    an error status from upstream   → UpstreamStatusError       (4xx kept, 5xx → 502; a context-window
                                                                 or content-policy refusal named in `reason`)
    a body that is not JSON         → UpstreamConnectionError   (502)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, Mapping
from typing import ClassVar, Protocol

import aiohttp
import orjson

from ferryman.core.canonical import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    JSONObject,
    StreamEvent,
)
from ferryman.core.retries import parse_retry_after
from ferryman.core.upstream import StreamBatch
from ferryman.errors import (
    FerrymanError,
    InvalidRequestError,
    Refusal,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ferryman.observability.logging import scrub
from ferryman.observability.tracing import inject_trace_headers
from ferryman.providers._sse import SSEEvent, iter_sse_batches
from ferryman.settings import Deployment

log = logging.getLogger("ferryman.providers")
_DRAIN_SECONDS = 0.1  # after `[DONE]`, how long the end of the body may take to come (see _drain_for_reuse)


class StreamParser(Protocol):
    """A wire module's stateful stream parser (see `ferryman.wire`)."""

    def feed(self, event: str | None, data: JSONObject) -> list[StreamEvent]:
        """Translate one upstream SSE event into canonical events."""
        ...

    def finish(self) -> list[StreamEvent]:
        """Emit whatever the stream still owes once the upstream has ended."""
        ...


class HttpProvider:
    """Shared machinery for providers reached over HTTP: pooled session, JSON calls, SSE streams."""

    name: ClassVar[str] = "http"
    default_api_base: ClassVar[str] = ""
    gen_ai_system: ClassVar[str] = "_OTHER"

    def __init__(self, deployment: Deployment, *, propagate_trace: bool = False) -> None:
        self.deployment = deployment
        self._propagate_trace = propagate_trace
        timeouts = deployment.timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._ssl = upstream_ssl(deployment)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session, created on first use inside the running event loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(), auto_decompress=True
            )
        return self._session

    async def aclose(self) -> None:
        """Close the pooled session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Providers without an embeddings API refuse clearly."""
        raise InvalidRequestError(f"provider {self.name} does not offer embeddings", param="model")

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """The upstream's own count of `request`'s input tokens; None for providers with no counting
        API (OpenAI's), whose count the gateway makes itself with `ferryman.tokenizers`. Counting is
        free at the providers that offer it: the pipeline records it at $0 (`Exchange.billed`)."""
        return None

    async def post_json(self, url: str, body: JSONObject, headers: Mapping[str, str]) -> JSONObject:
        """POST `body` and return the JSON answer, mapping every failure to a Ferryman error."""
        if self._propagate_trace:
            headers = inject_trace_headers(headers)
        try:
            async with self.session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=self._timeout
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise self.status_error(response.status, raw, response.headers)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"{self.name} did not answer in time", provider=self.name) from exc
        except aiohttp.ClientError as exc:
            raise self.connection_error(exc) from exc
        return self.decode_json(raw)

    async def stream_events(
        self, url: str, body: JSONObject, headers: Mapping[str, str], parser: StreamParser
    ) -> AsyncGenerator[StreamBatch, None]:
        """POST `body` and yield the canonical events parsed from each read of the SSE answer.

        Closing this generator early (the client went away) closes the upstream response, which
        aborts the upstream request instead of letting it run to the end unread.
        """
        if self._propagate_trace:
            headers = inject_trace_headers(headers)
        try:
            async with self.session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=self._stream_timeout
            ) as response:
                if response.status >= 400:
                    raise self.status_error(response.status, await response.read(), response.headers)
                async for sse_batch in iter_sse_batches(response.content.iter_any()):
                    batch, done = self._parse_batch(sse_batch, parser)
                    if batch:
                        yield batch
                    if done:
                        break
                tail = parser.finish()
                if tail:
                    yield tail
                await _drain_for_reuse(response)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"{self.name} stopped answering", provider=self.name) from exc
        except aiohttp.ClientError as exc:
            raise self.connection_error(exc) from exc

    def _parse_batch(self, sse_batch: list[SSEEvent], parser: StreamParser) -> tuple[list[StreamEvent], bool]:
        """Canonical events of one read, and whether the `[DONE]` sentinel ended the stream."""
        batch: list[StreamEvent] = []
        for event, data in sse_batch:
            if data == "[DONE]":
                return batch, True
            batch.extend(parser.feed(event, self.decode_json(data.encode())))
        return batch, False

    def decode_json(self, raw: bytes) -> JSONObject:
        """Parse an upstream JSON object; anything else is a broken upstream."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamConnectionError(
                f"{self.name} sent a reply that is not JSON", provider=self.name, code="upstream_malformed"
            ) from exc
        if not isinstance(value, dict):
            raise UpstreamConnectionError(
                f"{self.name} sent JSON that is not an object", provider=self.name, code="upstream_malformed"
            )
        return value

    def connection_error(self, exc: aiohttp.ClientError) -> FerrymanError:
        """Describe a transport failure without leaking URLs that might carry a key."""
        kind = type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return UpstreamConnectionError(
                f"could not verify the TLS certificate of {self.name} upstream ({kind}); a private CA "
                "needs ca_bundle or upstream_ca_bundle",
                provider=self.name,
                code="upstream_certificate_invalid",
            )
        return UpstreamConnectionError(f"could not reach {self.name} upstream ({kind})", provider=self.name)

    def status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
        """Keep the upstream's status and message, so a client sees what really went wrong.

        Providers echo credentials in some messages ("Incorrect API key provided: sk-…"): those are
        scrubbed, or the gateway would hand its upstream key to any client.
        """
        message, param = _error_message(raw)
        message = scrub(message)
        return UpstreamStatusError(
            f"{self.name} upstream returned {status}: {message}",
            provider=self.name,
            upstream_status=status,
            retry_after=_retry_after(headers),
            param=param,
            reason=_refusal(status, raw),
        )


def upstream_ssl(deployment: Deployment) -> ssl.SSLContext | bool:
    """How the deployment's connections verify the upstream: its CA bundle, the system's, or not at all."""
    if not deployment.verify_tls:
        log.warning(
            "TLS verification is off for deployment %s: its upstream is not authenticated", deployment.label
        )
        return False
    if deployment.ca_bundle is None:
        return True  # aiohttp's default: the system's trust store, hostname checked
    return ssl.create_default_context(cafile=deployment.ca_bundle)  # settings checked that it loads


async def _drain_for_reuse(response: aiohttp.ClientResponse) -> None:
    """Read the rest of a body whose stream has already ended (at `[DONE]`), waiting only briefly.

    aiohttp puts a connection back in the pool only when its body was read to the end, and the
    chunked terminator often arrives just after `[DONE]`: without this, many OpenAI-format streams
    would cost a new upstream connection. An upstream that keeps the body open past the wait gets its
    connection closed, as before.
    """
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            await response.content.read()


def _error_message(raw: bytes) -> tuple[str, str | None]:
    """Pull `error.message` (and `error.param`) from any of the three providers' error bodies."""
    with contextlib.suppress(orjson.JSONDecodeError):
        body = orjson.loads(raw)
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict):
                message = error.get("message")
                param = error.get("param")
                return (
                    str(message) if message is not None else "no message",
                    param if isinstance(param, str) else None,
                )
            if isinstance(error, str):
                return error, None
    text = raw[:300].decode("utf-8", "replace").strip()
    return text or "no message", None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta-seconds or an HTTP date)."""
    value_ms = headers.get("retry-after-ms")
    if value_ms is not None:
        with contextlib.suppress(ValueError):
            return max(float(value_ms) / 1000, 0.0)
    value = headers.get("retry-after")
    return parse_retry_after(value) if value is not None else None


# How each provider words a refusal another model might not repeat (codes exact, messages lowercased).
_CONTEXT_CODES = frozenset({"context_length_exceeded"})  # OpenAI, Azure, most OpenAI-compatible servers
_CONTEXT_PHRASES = (
    "prompt is too long",  # Anthropic: "prompt is too long: 210000 tokens > 200000 maximum"
    "maximum context length",  # OpenAI-compatible servers without the code (vLLM, older OpenAI)
    "context window",
    "exceeds the maximum number of tokens",  # Gemini: "The input token count (…) exceeds the maximum…"
)
_POLICY_CODES = frozenset({"content_filter", "content_policy_violation"})  # Azure, OpenAI images
_POLICY_PHRASES = ("content management policy", "content policy")


def _refusal(status: int, raw: bytes) -> Refusal | None:
    """Whether an upstream 400 refused the prompt's size or content (see `UpstreamStatusError.reason`)."""
    if status not in (400, 413, 422):
        return None
    error: object = None
    with contextlib.suppress(orjson.JSONDecodeError):
        body = orjson.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    code, message = error.get("code"), str(error.get("message") or "").lower()
    if code in _CONTEXT_CODES or any(phrase in message for phrase in _CONTEXT_PHRASES):
        return "context_window_exceeded"
    if code in _POLICY_CODES or any(phrase in message for phrase in _POLICY_PHRASES):
        return "content_policy"
    return None
