"""One request as the core sees it: who asked, what for, and what happened — filled in as it goes.

The api layer opens an `Exchange` when a request arrives (before it even knows the caller, so refused
requests are accounted for too), the pipeline and the attempt loop fill it in, and the observers read
it when the request is finished: the log line, the metrics and the traces all describe the same record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from ferryman.core.caller import ANONYMOUS, Caller
from ferryman.core.canonical import ChatRequest, EmbeddingRequest, JSONObject, Usage

# `count_tokens` counts a chat request's input (Anthropic's count_tokens, Gemini's countTokens):
# governed like the others (keys, model rules, rate limits, the ledger) but billed by no provider.
Operation: TypeAlias = Literal["chat", "embeddings", "count_tokens"]
CanonicalRequest: TypeAlias = ChatRequest | EmbeddingRequest


@dataclass(slots=True)
class Exchange:
    """What one request is and did; `notes` is where a stage keeps its own per-request memo.

    A stage keys its note by its own name (`exchange.notes["budget"] = reservation`), the way Starlette
    handlers use `request.state`: the pipeline never reads notes, so stages stay independent.
    """

    request_id: str
    spend_id: str = ""  # the ledger's key: unique per request, unlike a client's reused request id
    started: float = field(default_factory=time.perf_counter)
    caller: Caller = ANONYMOUS
    client_ip: str | None = None  # the peer, or the client a trusted proxy named (api/client_ip.py)
    operation: Operation = "chat"
    request: CanonicalRequest | None = None
    model: str = ""
    stream: bool = False
    # Filled in by the attempt loop:
    provider: str = ""
    deployment: str = ""
    upstream_model: str = ""
    served_model: str = ""  # the model that answered: the requested one, or a fallback
    deadline: float | None = None  # `time.perf_counter()` past which nothing more is tried
    attempts: int = 0
    upstream_seconds: float = 0.0
    time_to_first_token: float | None = None
    usage: Usage | None = None
    usage_estimated: bool = False
    cost: float | None = None
    answered_by: str = ""  # "upstream", or the name of the stage that answered by itself
    # Filled in when the request is finished:
    status: Literal["success", "error"] = "success"
    error: str | None = None
    http_status: int | None = None
    finished: float | None = None
    # Headers stages want on the answer (x-ratelimit-*, x-ferryman-cost-usd, …), refusals included:
    headers: dict[str, str] = field(default_factory=dict)
    # The response cache's (core/response_cache.py): the client's `Cache-Control` header as sent, the
    # cache's verdict ("" when the model is not cached), and whether a stage wants a stream's answer
    # assembled whole for its `exit` (`Outcome.response`):
    cache_control: str = ""
    cache_result: Literal["", "hit", "miss", "bypass"] = ""
    assemble_stream: bool = False
    # Kept only with `logging.log_bodies`:
    request_body: JSONObject | None = None
    response_body: str | None = None
    notes: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.spend_id:
            self.spend_id = self.request_id

    @property
    def billed(self) -> bool:
        """Whether a provider bills this operation. One it does not (counting tokens) reserves no
        tokens or budget and costs exactly $0, but is still counted, logged and in the ledger."""
        return self.operation != "count_tokens"

    def admit(self, caller: Caller, request: CanonicalRequest) -> None:
        """Record the authenticated caller and the parsed request; the end user comes from the body
        when no header named one."""
        self.caller = caller.for_end_user(request.user) if caller.end_user is None else caller
        self.request = request
        self.model = self.served_model = request.model
        self.operation = "embeddings" if isinstance(request, EmbeddingRequest) else "chat"
        self.stream = isinstance(request, ChatRequest) and request.stream

    @property
    def latency(self) -> float:
        """Seconds from arrival to completion (to now, while still running)."""
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started

    @property
    def overhead(self) -> float:
        """Seconds spent in the gateway rather than waiting on an upstream."""
        return max(self.latency - self.upstream_seconds, 0.0)
