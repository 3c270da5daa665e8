"""Ferryman's exception tree; `api/` is the only place one becomes an HTTP response.

    FerrymanError
    ├── ConfigError                 bad config file (carries every key path at fault)
    ├── SecretError                 a secret reference (`file:`, `aws-sm:`, `vault:`) cannot be read
    ├── RequestError                the client's fault, 4xx
    │   ├── InvalidRequestError     400: malformed JSON, missing or wrong-typed field (`param` names it)
    │   ├── AuthenticationError     401: no key, unknown / expired / revoked key
    │   ├── PermissionDeniedError   403: key may not use this model or route
    │   ├── NotFoundError           404: unknown model or route
    │   ├── ConflictError           409: the resource exists already, or may not be changed (read-only)
    │   ├── PayloadTooLargeError    413: body over the configured cap
    │   └── RateLimitError          429: rate limit or budget; carries `retry_after`
    ├── StoreUnavailableError       503: the key database cannot be reached, so a key cannot be checked
    ├── SharedStateUnavailableError 503: the shared-state server (Redis) failed or timed out, so limits
    │                               and budgets cannot be checked; the core decides fail-open / closed
    ├── InvalidationNotDeliveredError
    │                               503: an admin change is saved, but other replicas could not be told
    │                               to drop their cached copy; carries what was `saved`
    └── ProviderError               the upstream's fault or the path to it
        ├── UpstreamStatusError     the upstream answered 4xx / 5xx: a client-fault 4xx keeps its status
        │                           and message; 5xx and refused upstream credentials become 502
        ├── UpstreamConnectionError 502: refused, reset, dropped mid-body, unparseable reply
        └── UpstreamTimeoutError    504: connect or read timeout

Every error knows its HTTP `status`, OpenAI `type` and `code`, so rendering it is one function.
"""

from __future__ import annotations

from typing import Literal


class FerrymanError(Exception):
    """Root of every error Ferryman raises on purpose."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class ConfigError(FerrymanError):
    """The configuration is invalid; `problems` lists `(key path, message)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


class SecretError(FerrymanError):
    """A secret reference could not be read; the message names the reference, never a value."""


class RequestError(FerrymanError):
    """The request cannot be served as sent."""

    status = 400
    type = "invalid_request_error"


class InvalidRequestError(RequestError):
    """The body is malformed or a field is missing or of the wrong type."""

    status = 400
    code = "invalid_request"


class AuthenticationError(RequestError):
    """No usable credential was presented."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(RequestError):
    """The credential is valid but may not do this."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFoundError(RequestError):
    """The model (or other named resource) does not exist."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ConflictError(RequestError):
    """The change collides with what exists: a name taken, a read-only (config-file) model, a credential
    with no encryption key to seal it."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(RequestError):
    """The request body exceeds the configured size cap."""

    status = 413
    code = "request_too_large"


class RateLimitError(RequestError):
    """A rate limit or budget refuses the request for now; retry after `retry_after` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    worth_retrying: bool = True  # False where only a window's reset helps (an exhausted budget)

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StoreUnavailableError(FerrymanError):
    """The key store's database failed to answer (down, unreachable, or refusing the query).

    The store raises this at its boundary in place of the driver's own errors, so no layer above it
    needs to know which database (or driver) sits behind the store.
    """

    status = 503
    code = "key_store_unavailable"


class SharedStateUnavailableError(FerrymanError):
    """The shared-state backend (Redis) did not answer in time, refused the connection, or failed a script.

    The Redis backend raises this at its boundary in place of redis-py's and the socket's own errors, so
    the core can apply its fail-open or fail-closed policy to limits, budgets and the cache without
    importing a Redis client. The message names the error's class only: redis-py's messages may carry
    addresses.
    """

    status = 503
    code = "shared_state_unavailable"


class InvalidationNotDeliveredError(FerrymanError):
    """An admin change is committed, but the notice telling other replicas to forget the old key
    could not be sent; they may honour it until their cache entry expires.

    `saved` is the committed result (for a rotation, the only copy of the new secret), so the caller can
    still show it alongside the error.
    """

    status = 503
    code = "invalidation_not_delivered"

    def __init__(self, message: str, *, saved: object = None) -> None:
        super().__init__(message)
        self.saved = saved


class ProviderError(FerrymanError):
    """The upstream provider failed, or could not be reached."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"

    def __init__(self, message: str, *, provider: str, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.provider = provider

    @property
    def retryable(self) -> bool:
        """Whether another attempt (or another deployment) may succeed."""
        return True


Refusal = Literal["context_window_exceeded", "content_policy"]
"""Why an upstream refused a request that another *model* might take (`UpstreamStatusError.reason`)."""
_REFUSAL_CODES: dict[Refusal, str] = {
    "context_window_exceeded": "context_length_exceeded",
    "content_policy": "content_filter",
}


class UpstreamStatusError(ProviderError):
    """The upstream answered with an error status; 4xx keep their meaning for the client.

    `reason` names a refusal of this request by this model that a different model might not repeat
    (the prompt is longer than its context window, its content policy refused it): not retryable on
    the same model, but worth a fallback model.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        upstream_status: int,
        retry_after: float | None = None,
        param: str | None = None,
        reason: Refusal | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.param = param
        self.reason = reason
        # The client's request keeps its meaning (400, 404, 413, 422, 429…), but an upstream that refuses
        # the *gateway's* credentials is the gateway's fault: a 401 would wrongly blame the client's key.
        client_fault = 400 <= upstream_status < 500 and upstream_status not in (401, 403, 407)
        self.status = upstream_status if client_fault else 502
        self.type, self.code = _upstream_type_and_code(upstream_status)
        if reason is not None:  # OpenAI's own codes, which clients already check for
            self.code = _REFUSAL_CODES[reason]

    @property
    def retryable(self) -> bool:
        """Rate limits, timeouts and server errors may pass; other client errors will not."""
        return self.upstream_status in (408, 409, 429) or self.upstream_status >= 500


class UpstreamConnectionError(ProviderError):
    """The upstream could not be reached or broke the connection."""

    code = "upstream_unreachable"


class UpstreamTimeoutError(ProviderError):
    """The upstream did not answer in time."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


def _upstream_type_and_code(status: int) -> tuple[str, str]:
    """Map an upstream status to the OpenAI error `type` and `code` a client expects for it."""
    if status == 400:
        return "invalid_request_error", "upstream_bad_request"
    if status == 401:
        return "upstream_error", "upstream_authentication_failed"
    if status == 403:
        return "upstream_error", "upstream_permission_denied"
    if status == 404:
        return "invalid_request_error", "upstream_not_found"
    if status == 429:
        return "rate_limit_error", "upstream_rate_limited"
    if 400 <= status < 500:
        return "invalid_request_error", "upstream_client_error"
    return "upstream_error", "upstream_server_error"
