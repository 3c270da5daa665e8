"""The access log: one JSON line per request, answered or refused, written when it is finished."""

from __future__ import annotations

import orjson

from ferryman.core.exchange import Exchange
from ferryman.core.observer import NullObserver
from ferryman.observability.logging import log_request


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class AccessLogObserver(NullObserver):
    """Writes the request's one summary line; bodies only when the api kept them (`log_bodies`), and
    the log formatter scrubs credentials out of them like out of every other string. Every other
    event is the null observer's: the line is written once, at the end."""

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """The line; `http_status` is the status the answer (or a mid-stream error event) carried."""
        usage, caller = exchange.usage, exchange.caller
        fields: dict[str, object] = {
            "model": exchange.model,
            "provider": exchange.provider,
            "deployment": exchange.deployment,
            "key_alias": caller.key_alias,
            "team_id": caller.team_id,
            "end_user": caller.end_user,
            "client_ip": exchange.client_ip,
            "status": exchange.status,
            "error": exchange.error,
            "http_status": exchange.http_status,
            "stream": exchange.stream,
            "attempts": exchange.attempts,
            "latency_ms": _ms(exchange.latency),
            "upstream_ms": _ms(exchange.upstream_seconds),
            "ttft_ms": _ms(exchange.time_to_first_token),
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cached_tokens": usage.cached_tokens if usage else None,
            "cost_usd": exchange.cost,
        }
        if exchange.request_body is not None:
            fields["request_body"] = orjson.dumps(exchange.request_body).decode()
            fields["response_body"] = exchange.response_body or ""
        log_request(fields)
