"""The gateway's own per-request options as headers, for every ingress format: fallbacks and timeout.

`x-ferryman-fallbacks: model-b, model-c` names the fallback models (replacing the configured ones; an
empty value: none), `x-ferryman-timeout: 2.5` the request's timeout in seconds. A header wins over the
same option in an OpenAI body (`fallbacks`, `timeout`); a value that cannot be read is a 400 naming
the header. What they mean is in `core/fallbacks.py` and `core/timeouts.py`.

`anthropic-beta: a, b` (Anthropic's own header, which its SDK sends) becomes a chat request's `betas`,
whatever the ingress format: only Anthropic upstreams are sent them, filtered by the model's
`anthropic_betas` list (`providers/anthropic.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from ferryman.core.canonical import ChatRequest
from ferryman.core.exchange import CanonicalRequest
from ferryman.errors import InvalidRequestError
from ferryman.wire._fields import MAX_FALLBACKS, MAX_TIMEOUT_SECONDS

FALLBACKS_HEADER = "x-ferryman-fallbacks"
TIMEOUT_HEADER = "x-ferryman-timeout"
BETA_HEADER = "anthropic-beta"


def with_request_options(request: CanonicalRequest, headers: Mapping[str, str]) -> CanonicalRequest:
    """`request` with the options its headers set (unchanged, and not copied, when they set none)."""
    fallbacks, timeout = headers.get(FALLBACKS_HEADER), headers.get(TIMEOUT_HEADER)
    betas = headers.get(BETA_HEADER)
    if betas is not None and isinstance(request, ChatRequest):
        request = dataclasses.replace(request, betas=parse_betas(betas))
    if fallbacks is None and timeout is None:
        return request
    if fallbacks is not None:
        request = dataclasses.replace(request, fallbacks=parse_fallbacks(fallbacks))
    if timeout is not None:
        request = dataclasses.replace(request, timeout=parse_timeout(timeout))
    return request


def parse_betas(value: str) -> tuple[str, ...]:
    """Comma-separated beta names, as Anthropic reads the header; blanks and repeats are dropped."""
    return tuple(dict.fromkeys(name for name in (part.strip() for part in value.split(",")) if name))


def parse_fallbacks(value: str) -> tuple[str, ...]:
    """Comma-separated model names; blanks between commas are ignored."""
    names = tuple(name for name in (part.strip() for part in value.split(",")) if name)
    if len(names) > MAX_FALLBACKS:
        raise InvalidRequestError(
            f"The {FALLBACKS_HEADER} header may name at most {MAX_FALLBACKS} models.", param=FALLBACKS_HEADER
        )
    return names


def parse_timeout(value: str) -> float:
    """Positive seconds, at most a day."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:  # also refuses NaN and infinities
        raise InvalidRequestError(
            f"The {TIMEOUT_HEADER} header must be a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT_SECONDS:g}, not {value[:40]!r}.",
            param=TIMEOUT_HEADER,
        )
    return seconds
