"""Who is calling: the credential every official SDK sends, checked in constant time.

Clients present a key the way their SDK does: `Authorization: Bearer` (OpenAI, and recent Anthropic
SDKs), `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini). With no master key configured the
gateway is open — the embedded default, for a first offline try — and says so in its start-up log.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request

from ferryman.errors import AuthenticationError
from ferryman.observability.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    key_alias: str
    is_admin: bool


ANONYMOUS = Principal(key_alias="anonymous", is_admin=False)
_NO_KEY = "No API key was provided. Send it as `Authorization: Bearer <key>`."
_BAD_KEY = "The API key is invalid, expired or revoked."


def presented_key(request: Request) -> str | None:
    """The key the client sent, in whichever header its SDK uses."""
    headers = request.headers
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for header in ("x-api-key", "x-goog-api-key", "api-key"):
        value = headers.get(header)
        if value:
            return value.strip()
    return request.query_params.get("key") or None


class Authenticator:
    """Checks presented keys; today the master key, tomorrow virtual keys from the database."""

    def __init__(self, master_key: str | None, metrics: Metrics) -> None:
        self._master = master_key.encode() if master_key else None
        self._metrics = metrics

    @property
    def enabled(self) -> bool:
        """Whether any credential is required at all."""
        return self._master is not None

    def authenticate(self, request: Request) -> Principal:
        """The caller, or AuthenticationError (one message for every bad key: no oracle)."""
        if self._master is None:
            return ANONYMOUS
        key = presented_key(request)
        if key is None:
            self._metrics.auth_failures.labels("missing").inc()
            raise AuthenticationError(_NO_KEY)
        if hmac.compare_digest(key.encode(), self._master):
            return Principal(key_alias="master", is_admin=True)
        self._metrics.auth_failures.labels("invalid").inc()
        raise AuthenticationError(_BAD_KEY)
