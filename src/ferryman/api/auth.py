"""Who is calling, and what they may do: the master key, config keys and database keys, checked per request.

Clients present a key the way their SDK does: `Authorization: Bearer` (OpenAI, and recent Anthropic
SDKs), `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini). The master key is compared in
constant time; virtual keys are looked up by SHA-256 through the key store's in-process cache, so a known
key costs no database round trip. Every refused key gets the same message — unknown, expired, blocked
and revoked are told apart only in the `ai_api_auth_failures_total{reason}` metric, never to the client.
With no master key and no key store configured the gateway is open — the embedded default, for a first
offline try — and says so in its start-up log.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import NoReturn

from opentelemetry.trace import Tracer
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from ferryman.errors import AuthenticationError, FerrymanError, PermissionDeniedError
from ferryman.observability.metrics import Metrics
from ferryman.store.records import KeyGrant, Limits, models_allow, utc_now
from ferryman.store.service import KeyService


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a name for logs, and the rules the layers after auth enforce.

    `key_limits` and `team_limits` are kept apart because a team's limits are shared by all its keys;
    for model allow-lists the stricter of key and team applies (`allows_model`).
    """

    key_alias: str
    is_admin: bool
    key_id: str | None = None
    team_id: str | None = None
    key_models: tuple[str, ...] | None = None
    team_models: tuple[str, ...] | None = None
    key_limits: Limits = field(default_factory=Limits)
    team_limits: Limits | None = None

    def allows_model(self, model: str) -> bool:
        """Whether both the key's and the team's allow-lists admit `model`."""
        return models_allow(self.key_models, model) and models_allow(self.team_models, model)


ANONYMOUS = Principal(key_alias="anonymous", is_admin=False)
MASTER = Principal(key_alias="master", is_admin=True)
_NO_KEY = "No API key was provided. Send it as `Authorization: Bearer <key>`."
_BAD_KEY = "The API key is invalid, expired or revoked."


class KeyStoreUnavailableError(FerrymanError):
    """The key database could not be reached, so a key not in the cache cannot be checked."""

    status = 503
    code = "key_store_unavailable"


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


def principal_for(grant: KeyGrant) -> Principal:
    """The caller a virtual key stands for; named by alias, or by key id (never by the secret)."""
    return Principal(
        key_alias=grant.alias or f"key:{grant.key_id}",
        is_admin=False,
        key_id=grant.key_id,
        team_id=grant.team_id,
        key_models=grant.key_models,
        team_models=grant.team_models,
        key_limits=grant.key_limits,
        team_limits=grant.team_limits,
    )


class Authenticator:
    """Checks presented keys: the master key first, then the key store (config keys and database keys)."""

    def __init__(
        self,
        master_key: str | None,
        metrics: Metrics,
        keys: KeyService | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._master = master_key.encode() if master_key else None
        self._metrics = metrics
        self._keys = keys
        self._tracer = tracer

    @property
    def enabled(self) -> bool:
        """Whether any credential is required at all."""
        return self._master is not None or (self._keys is not None and self._keys.enforces_keys)

    async def authenticate(self, request: Request) -> Principal:
        """The caller, or AuthenticationError (one message for every bad key: no oracle)."""
        if self._tracer is None:
            return await self._authenticate(request)
        with self._tracer.start_as_current_span("auth") as span:
            principal = await self._authenticate(request)
            span.set_attribute("ferryman.key_alias", principal.key_alias)
            if principal.team_id is not None:
                span.set_attribute("ferryman.team_id", principal.team_id)
            return principal

    async def _authenticate(self, request: Request) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        key = presented_key(request)
        if key is None:
            self._metrics.auth_failures.labels("missing").inc()
            raise AuthenticationError(_NO_KEY)
        if self._master is not None and hmac.compare_digest(key.encode(), self._master):
            return MASTER
        grant = await self._lookup(key)
        if grant is None:
            self._refuse("invalid")
        reason = grant.refusal(utc_now())
        if reason is not None:
            self._refuse(reason)
        if self._keys is not None:
            self._keys.note_use(grant)
        return principal_for(grant)

    def authorize_model(self, principal: Principal, model: str) -> None:
        """PermissionDeniedError (403, naming the model) unless the caller may use `model`."""
        if principal.allows_model(model):
            return
        self._metrics.auth_failures.labels("forbidden_model").inc()
        raise PermissionDeniedError(
            f"This API key is not allowed to use model {model!r}.", param="model", code="model_not_allowed"
        )

    def require_admin(self, principal: Principal) -> None:
        """PermissionDeniedError (403) unless the caller holds the master key."""
        if principal.is_admin:
            return
        self._metrics.auth_failures.labels("forbidden_admin").inc()
        raise PermissionDeniedError("The admin API needs the master key.", code="admin_required")

    def _refuse(self, reason: str) -> NoReturn:
        self._metrics.auth_failures.labels(reason).inc()
        raise AuthenticationError(_BAD_KEY)

    async def _lookup(self, key: str) -> KeyGrant | None:
        if self._keys is None:
            return None
        try:
            return (await self._keys.resolve(key)).grant
        except (SQLAlchemyError, OSError) as exc:
            raise KeyStoreUnavailableError("The key store is unavailable; retry shortly.") from exc
