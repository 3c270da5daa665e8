"""Who is calling, and what they may do: the master key, config keys and database keys, checked per request.

Clients present a key the way their SDK does: `Authorization: Bearer` (OpenAI, and recent Anthropic
SDKs), `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini). The master key is compared in
constant time; virtual keys are looked up by SHA-256 through the key store's in-process cache, so a known
key costs no database round trip. Every refused key gets the same message — unknown, expired, blocked
and revoked are told apart only in the `ai_api_auth_failures_total{reason}` metric, never to the client.
With no master key and no key store configured the gateway is open — the embedded default, for a first
offline try — and says so in its start-up log.

On `/admin/` the caller's role decides (`authorize_admin`): the master key and `admin` keys may do
everything, `viewer` keys may read (GET and HEAD), every other key gets 403 `admin_required`; a viewer
that tries to change something gets 403 `admin_role_required`.
"""

from __future__ import annotations

import hmac
import re
from typing import NoReturn

from opentelemetry.trace import Tracer
from starlette.requests import Request

from ferryman.core.caller import ANONYMOUS, MASTER, AdminRole, Caller
from ferryman.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from ferryman.observability.metrics import Metrics
from ferryman.store.records import KeyGrant, utc_now
from ferryman.store.service import KeyService

_NO_KEY = "No API key was provided. Send it as `Authorization: Bearer <key>`."
_BAD_KEY = "The API key is invalid, expired or revoked."
END_USER_HEADER = "x-ferryman-end-user"
_END_USER = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,255}$")  # printable ASCII, at most 256 characters


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


def end_user_header(request: Request) -> str | None:
    """The application's end user, from `x-ferryman-end-user` (bodies name one too: see `Exchange`)."""
    value = request.headers.get(END_USER_HEADER)
    if value is None:
        return None
    if not _END_USER.match(value):
        raise InvalidRequestError(
            f"`{END_USER_HEADER}` must be 1 to 256 printable ASCII characters.", param=END_USER_HEADER
        )
    return value


def caller_for(grant: KeyGrant) -> Caller:
    """The caller a virtual key stands for; named by alias, or by key id (never by the secret)."""
    return Caller(
        key_alias=grant.alias or f"key:{grant.key_id}",
        key_id=grant.key_id,
        team_id=grant.team_id,
        key_models=grant.key_models,
        team_models=grant.team_models,
        key_limits=grant.key_limits,
        team_limits=grant.team_limits,
        role=grant.role,
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

    async def authenticate(self, request: Request) -> Caller:
        """The caller, or AuthenticationError (one message for every bad key: no oracle); the end user
        named by `x-ferryman-end-user`, if any, rides along."""
        if self._tracer is None:
            caller = await self._authenticate(request)
        else:
            with self._tracer.start_as_current_span("auth") as span:
                caller = await self._authenticate(request)
                span.set_attribute("ferryman.key_alias", caller.key_alias)
                if caller.team_id is not None:
                    span.set_attribute("ferryman.team_id", caller.team_id)
        return caller.for_end_user(end_user_header(request))

    async def _authenticate(self, request: Request) -> Caller:
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
        return caller_for(grant)

    def authorize_admin(self, caller: Caller, method: str) -> None:
        """PermissionDeniedError (403) unless the caller's admin role admits `method` on `/admin/`:
        `admin_required` for a key with no role, `admin_role_required` for a viewer changing something."""
        if caller.may_administer(method):
            return
        if caller.role is None:
            self._metrics.auth_failures.labels("forbidden_admin").inc()
            raise PermissionDeniedError(
                "The admin API needs the master key or a key with an admin role.", code="admin_required"
            )
        self._metrics.auth_failures.labels("forbidden_role").inc()
        raise PermissionDeniedError(
            f"This key's admin role is `{caller.role}`: it may read the admin API but not change it; "
            f"{method.upper()} needs the `{AdminRole.ADMIN}` role.",
            code="admin_role_required",
        )

    def _refuse(self, reason: str) -> NoReturn:
        self._metrics.auth_failures.labels(reason).inc()
        raise AuthenticationError(_BAD_KEY)

    async def _lookup(self, key: str) -> KeyGrant | None:
        if self._keys is None:
            return None
        return (await self._keys.resolve(key)).grant  # StoreUnavailableError (503) when it cannot tell
