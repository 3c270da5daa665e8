"""The admin API under `/admin/`: virtual keys and teams, master key only, documented in the OpenAPI schema.

Bodies are pydantic models, so FastAPI validates them and `/docs` shows them; a malformed body becomes
our 400 error naming the field (`handle_validation_error`). Every field is bounded here, at the edge, to
what the database columns hold, so no value can reach SQL and fail there. One body model per resource
serves both POST and PATCH: on PATCH only the fields present in the body change, and an explicit `null`
clears one. Secrets appear in exactly two responses — creation and rotation — and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

import orjson
from fastapi import APIRouter, Depends, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from starlette.requests import Request
from starlette.responses import Response

from ferryman.api.errors import error_response
from ferryman.api.state import AppState
from ferryman.errors import InvalidationNotDeliveredError, InvalidRequestError
from ferryman.observability.metrics import Metrics
from ferryman.store.records import IssuedKey, KeyRecord, KeySettings, Limits, TeamRecord, TeamSettings
from ferryman.store.service import KeyService

# The ceilings of the columns behind the fields (`store/tables.py`): BIGINT, INTEGER, NUMERIC(18, 6).
MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1
MAX_USD = 10**12  # exclusive: NUMERIC(18, 6) has 12 digits before the point
MAX_MODELS = 1_000
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 16
# Printable text only: PostgreSQL refuses NUL in a string column, and control characters in an alias
# or a model name are a mistake (or an attack on whoever reads the logs).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

ModelPattern = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)]
Identifier = Annotated[str, Field(min_length=1, max_length=32, pattern=PRINTABLE)]
Count = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
Usd = Annotated[float, Field(ge=0, lt=MAX_USD, allow_inf_nan=False)]


class BudgetBody(BaseModel):
    """Spending caps in USD; enforced by the budget layer."""

    model_config = ConfigDict(extra="forbid")

    daily_usd: Usd | None = Field(default=None, description="Cap per UTC day.")
    monthly_usd: Usd | None = Field(default=None, description="Cap per calendar month.")


class _RulesBody(BaseModel):
    """Fields keys and teams share."""

    model_config = ConfigDict(extra="forbid")

    alias: str | None = Field(
        default=None, max_length=200, pattern=PRINTABLE, description="A name for people and logs."
    )
    models: list[ModelPattern] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODELS,
        description="Allowed model names or `*` patterns; omit or null for every model.",
    )
    rpm_limit: Count | None = Field(default=None, description="Requests per minute.")
    tpm_limit: Count | None = Field(default=None, description="Tokens per minute.")
    max_parallel: int | None = Field(
        default=None, ge=1, le=MAX_INT, description="Requests in flight at once."
    )
    budget: BudgetBody | None = None
    metadata: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=f"Free-form JSON for you: up to {MAX_METADATA_BYTES} bytes, {MAX_METADATA_DEPTH} levels.",
    )
    blocked: bool = Field(
        default=False, description="A blocked key (or every key of a blocked team) is refused."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_fits(cls, metadata: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """Finite numbers only (JSON has no NaN, PostgreSQL refuses it), bounded depth, bounded size."""
        _check_json(metadata)
        size = len(orjson.dumps(metadata))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"at most {MAX_METADATA_BYTES} bytes of JSON, got {size}")
        return metadata


class TeamBody(_RulesBody):
    """A team's settings (POST creates; PATCH changes only the fields sent)."""


class KeyBody(_RulesBody):
    """A key's settings (POST creates; PATCH changes only the fields sent)."""

    team_id: Identifier | None = Field(
        default=None, description="The team this key belongs to (at most one)."
    )
    expires_at: datetime | None = Field(default=None, description="After this instant the key is refused.")

    @field_validator("expires_at")
    @classmethod
    def _expires_in_utc(cls, moment: datetime | None) -> datetime | None:
        """The store keeps UTC: an instant a zone offset pushes past year 9999 (or before year 1)
        cannot be stored, so it is refused here rather than failing in the database."""
        try:
            return _utc(moment)
        except OverflowError:
            raise ValueError("out of range once converted to UTC") from None


def _check_json(value: JsonValue, depth: int = 0) -> None:
    """ValueError for a number no JSON reader agrees on (NaN, Infinity, an integer past 64 bits) or for
    nesting past `MAX_METADATA_DEPTH`."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    if isinstance(value, int) and not -(2**63) <= value <= MAX_BIGINT:
        raise ValueError("integers must fit in 64 bits")
    if isinstance(value, dict):
        for child in value.values():
            _check_json(child, depth + 1)
    elif isinstance(value, list):
        for child in value:
            _check_json(child, depth + 1)


class BudgetOut(BaseModel):
    """Spending caps in USD."""

    daily_usd: float | None
    monthly_usd: float | None


class _RulesOut(BaseModel):
    id: str
    alias: str | None
    models: list[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel: int | None
    budget: BudgetOut
    metadata: dict[str, JsonValue]
    blocked: bool
    created_at: datetime
    updated_at: datetime


class TeamOut(_RulesOut):
    """A stored team."""


class KeyOut(_RulesOut):
    """A stored key: everything but the secret."""

    key_prefix: str = Field(description="The non-secret start of the key, to recognise it.")
    team_id: str | None
    expires_at: datetime | None
    revoked: bool
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="Updated at most about once a minute.")


class KeyCreated(KeyOut):
    """A key with its secret: returned by creation and rotation only. Store the secret now."""

    key: str = Field(description="The secret (`fm-…`). It is not stored and cannot be shown again.")


class KeyList(BaseModel):
    """Keys, oldest first."""

    data: list[KeyOut]


class TeamList(BaseModel):
    """Teams, oldest first."""

    data: list[TeamOut]


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Malformed body; `param` names the field."),
        (401, "No key, or not a valid key."),
        (403, "Not the master key."),
        (404, "No such key or team."),
        (
            503,
            "The key store is unavailable (`key_store_unavailable`), or the change is saved but the other "
            "replicas could not be told (`invalidation_not_delivered`; the saved resource is in `saved`).",
        ),
    )
}


def key_changes(body: KeyBody) -> Callable[[KeySettings], KeySettings]:
    """The fields present in `body` applied to a key's settings (creation applies them to defaults)."""
    plain = {"alias", "team_id", "blocked"} & body.model_fields_set
    changes: dict[str, Any] = {name: getattr(body, name) for name in plain}
    if "expires_at" in body.model_fields_set:
        changes["expires_at"] = _utc(body.expires_at)
    return lambda current: replace(current, **changes, **_shared_changes(body, current.limits))


def team_changes(body: TeamBody) -> Callable[[TeamSettings], TeamSettings]:
    """The fields present in `body` applied to a team's settings."""
    plain = {"alias", "blocked"} & body.model_fields_set
    changes: dict[str, Any] = {name: getattr(body, name) for name in plain}
    return lambda current: replace(current, **changes, **_shared_changes(body, current.limits))


def _shared_changes(body: _RulesBody, limits: Limits) -> dict[str, Any]:
    fields = body.model_fields_set
    changes: dict[str, Any] = {"limits": _changed_limits(body, limits)}
    if "models" in fields:
        changes["models"] = None if body.models is None else tuple(body.models)
    if "metadata" in fields:
        changes["metadata"] = dict(body.metadata)
    return changes


def _changed_limits(body: _RulesBody, limits: Limits) -> Limits:
    changes: dict[str, Any] = {
        name: getattr(body, name)
        for name in {"rpm_limit", "tpm_limit", "max_parallel"} & body.model_fields_set
    }
    if "budget" in body.model_fields_set:
        budget = body.budget or BudgetBody(daily_usd=None, monthly_usd=None)
        if "daily_usd" in budget.model_fields_set or body.budget is None:
            changes["daily_budget_usd"] = budget.daily_usd
        if "monthly_usd" in budget.model_fields_set or body.budget is None:
            changes["monthly_budget_usd"] = budget.monthly_usd
    return replace(limits, **changes)


def _utc(moment: datetime | None) -> datetime | None:
    """`moment` in UTC (a naive one is taken to be UTC already); OverflowError past the year range."""
    if moment is None:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rules_out(limits: Limits) -> dict[str, Any]:
    return {
        "rpm_limit": limits.rpm_limit,
        "tpm_limit": limits.tpm_limit,
        "max_parallel": limits.max_parallel,
        "budget": BudgetOut(daily_usd=limits.daily_budget_usd, monthly_usd=limits.monthly_budget_usd),
    }


def key_out(record: KeyRecord) -> KeyOut:
    """A key record as its API representation."""
    s = record.settings
    return KeyOut(
        id=record.id,
        key_prefix=record.key_prefix,
        alias=s.alias,
        team_id=s.team_id,
        models=None if s.models is None else list(s.models),
        expires_at=s.expires_at,
        metadata=s.metadata,
        blocked=s.blocked,
        revoked=record.revoked_at is not None,
        revoked_at=record.revoked_at,
        created_at=record.created_at,
        updated_at=record.updated_at,
        last_used_at=record.last_used_at,
        **_rules_out(s.limits),
    )


def key_created(issued: IssuedKey) -> KeyCreated:
    """A freshly issued key, secret included."""
    return KeyCreated(key=issued.secret, **key_out(issued.record).model_dump())


def team_out(record: TeamRecord) -> TeamOut:
    """A team record as its API representation."""
    s = record.settings
    return TeamOut(
        id=record.id,
        alias=s.alias,
        models=None if s.models is None else list(s.models),
        metadata=s.metadata,
        blocked=s.blocked,
        created_at=record.created_at,
        updated_at=record.updated_at,
        **_rules_out(s.limits),
    )


def key_service(request: Request) -> KeyService:
    """The app's key service."""
    state: AppState = request.app.state.ferryman
    if state.keys is None:  # pragma: no cover - the lifespan always opens one
        raise RuntimeError("the key service is not open")
    return state.keys


async def require_master(request: Request) -> None:
    """Admin routes accept the master key only: 401 without a valid key, 403 with a client key."""
    state: AppState = request.app.state.ferryman
    state.auth.require_admin(await state.auth.authenticate(request))


Saved = TypeVar("Saved")
Shown = TypeVar("Shown", bound=BaseModel)


class Announcer:
    """Shows the result of a change other replicas must hear about; when it was saved but they could
    not be told, counts it and answers 503 with the saved resource next to the error."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(self, change: Awaitable[Saved], show: Callable[[Saved], Shown]) -> Shown:
        """`show(await change)`, or InvalidationNotDeliveredError carrying `show(saved)`."""
        try:
            return show(await change)
        except InvalidationNotDeliveredError as exc:
            self._metrics.invalidation_failures.inc()
            # The store hands back what it committed: for a rotation, the only copy of the new secret.
            shown = show(cast(Saved, exc.saved))
            raise InvalidationNotDeliveredError(exc.message, saved=shown) from exc


def announcer(request: Request) -> Announcer:
    """The app's announcer (it counts on the app's metrics)."""
    state: AppState = request.app.state.ferryman
    return Announcer(state.metrics)


Keys = Annotated[KeyService, Depends(key_service)]
Announce = Annotated[Announcer, Depends(announcer)]
ResourceId = Annotated[str, Path(max_length=32, pattern=PRINTABLE)]  # ids are 32 hex digits


async def create_key(body: KeyBody, keys: Keys) -> KeyCreated:
    """Issue a virtual key. The response holds the secret; it is shown this once."""
    return key_created(await keys.create_key(key_changes(body)(KeySettings())))


async def list_keys(
    keys: Keys,
    team_id: Annotated[str | None, Query(max_length=32, pattern=PRINTABLE)] = None,
    include_revoked: bool = False,
) -> KeyList:
    """List keys (secrets are never returned)."""
    records = await keys.repository.list_keys(team_id=team_id, include_revoked=include_revoked)
    return KeyList(data=[key_out(r) for r in records])


async def get_key(key_id: ResourceId, keys: Keys) -> KeyOut:
    """One key, revoked or not."""
    return key_out(await keys.repository.get_key(key_id))


async def update_key(key_id: ResourceId, body: KeyBody, keys: Keys, announce: Announce) -> KeyOut:
    """Change the fields sent; the change reaches every replica at once (with Redis)."""
    return await announce(keys.update_key(key_id, key_changes(body)), key_out)


async def rotate_key(key_id: ResourceId, keys: Keys, announce: Announce) -> KeyCreated:
    """A new secret for the same key id; the old secret stops working everywhere."""
    return await announce(keys.rotate_key(key_id), key_created)


async def revoke_key(key_id: ResourceId, keys: Keys, announce: Announce) -> KeyOut:
    """Revoke the key for good; every replica refuses it from now on."""
    return await announce(keys.revoke_key(key_id), key_out)


async def create_team(body: TeamBody, keys: Keys) -> TeamOut:
    """Create a team; its allow-list, limits and budgets bound every key in it."""
    return team_out(await keys.repository.create_team(team_changes(body)(TeamSettings())))


async def list_teams(keys: Keys) -> TeamList:
    """List teams."""
    return TeamList(data=[team_out(r) for r in await keys.repository.list_teams()])


async def get_team(team_id: ResourceId, keys: Keys) -> TeamOut:
    """One team."""
    return team_out(await keys.repository.get_team(team_id))


async def update_team(team_id: ResourceId, body: TeamBody, keys: Keys, announce: Announce) -> TeamOut:
    """Change the fields sent; every key of the team is re-checked on its next request."""
    return await announce(keys.update_team(team_id, team_changes(body)), team_out)


async def delete_team(team_id: ResourceId, keys: Keys, announce: Announce) -> TeamOut:
    """Delete the team; its keys are refused from now on."""
    return await announce(keys.delete_team(team_id), team_out)


_ROUTES: tuple[tuple[str, str, Callable[..., Any], int], ...] = (
    ("POST", "/keys", create_key, 201),
    ("GET", "/keys", list_keys, 200),
    ("GET", "/keys/{key_id}", get_key, 200),
    ("PATCH", "/keys/{key_id}", update_key, 200),
    ("POST", "/keys/{key_id}/rotate", rotate_key, 200),
    ("DELETE", "/keys/{key_id}", revoke_key, 200),
    ("POST", "/teams", create_team, 201),
    ("GET", "/teams", list_teams, 200),
    ("GET", "/teams/{team_id}", get_team, 200),
    ("PATCH", "/teams/{team_id}", update_team, 200),
    ("DELETE", "/teams/{team_id}", delete_team, 200),
)


def admin_router() -> APIRouter:
    """The `/admin` routes, each behind the master-key check."""
    router = APIRouter(
        prefix="/admin", tags=["admin"], dependencies=[Depends(require_master)], responses=_ERRORS
    )
    for method, path, endpoint, status in _ROUTES:
        router.add_api_route(path, endpoint, methods=[method], status_code=status)
    return router


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's body and parameter errors as our 400, naming the field (`budget.daily_usd`)."""
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this class only
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = ".".join(str(part) for part in first.get("loc", ())[1:] if isinstance(part, str)) or None
    reason = str(first.get("msg", "invalid request"))
    message = f"{param}: {reason}" if param else f"Invalid request body: {reason}"
    return error_response(InvalidRequestError(message, param=param))
