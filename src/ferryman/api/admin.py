"""The admin API under `/admin/`: virtual keys and teams, by role, audited, documented in the OpenAPI schema.

Every route is behind `admit_admin` (`api/audit.py`): the master key and `admin` keys may do everything,
`viewer` keys may read; every change, made or refused, is in the audit log (`GET /admin/audit`).

Bodies are pydantic models, so FastAPI validates them and `/docs` shows them; a malformed body becomes
our 400 error naming the field (`handle_validation_error`). Every field is bounded here, at the edge, to
what the database columns hold, so no value can reach SQL and fail there. One body model per resource
serves both POST and PATCH: on PATCH only the fields present in the body change, and an explicit `null`
clears one. Secrets appear in exactly two responses — creation and rotation — and nowhere else.
`GET /admin/spend` reports the spend ledger's daily rollup, as JSON or CSV (`ferryman spend` shares
its parsing and rendering).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, TypeVar, cast

import orjson
from fastapi import APIRouter, Depends, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from starlette.requests import Request
from starlette.responses import Response

from ferryman.api.admin_deployments import add_deployment_routes
from ferryman.api.admin_models import add_model_routes
from ferryman.api.audit import AuditedRoute, add_audit_routes, admit_admin
from ferryman.api.errors import error_response
from ferryman.api.state import AppState
from ferryman.core.caller import AdminRole
from ferryman.errors import InvalidationNotDeliveredError, InvalidRequestError
from ferryman.observability.metrics import Metrics
from ferryman.store.records import IssuedKey, KeyRecord, KeySettings, Limits, TeamRecord, TeamSettings
from ferryman.store.service import KeyService
from ferryman.store.sql_ledger import (
    GROUP_FIELDS,
    MAX_TEXT,
    SUMS,
    SpendRow,
    SqlLedger,
    UsageTotals,
    open_ledger,
)

# The ceilings of the columns behind the fields (`store/tables.py`): BIGINT, INTEGER, NUMERIC(18, 6).
MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1
MAX_USD = 10**12  # exclusive: NUMERIC(18, 6) has 12 digits before the point
MAX_MODELS = 1_000
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 16
MAX_END_USER_BUDGETS = 1_000  # a key's explicit ones; more belong in the end users' own system
# Printable text only: PostgreSQL refuses NUL in a string column, and control characters in an alias
# or a model name are a mistake (or an attack on whoever reads the logs).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

ModelPattern = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)]
Identifier = Annotated[str, Field(min_length=1, max_length=32, pattern=PRINTABLE)]
Count = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
Usd = Annotated[float, Field(ge=0, lt=MAX_USD, allow_inf_nan=False)]
EndUserId = Annotated[str, Field(min_length=1, max_length=256, pattern=PRINTABLE)]


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
    end_user_budget: BudgetBody | None = Field(
        default=None,
        description="The default budget of each end user (per key) unless one has their own.",
    )
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
    end_user_budgets: dict[EndUserId, BudgetBody] | None = Field(
        default=None,
        max_length=MAX_END_USER_BUDGETS,
        description="End users whose own budget replaces the defaults (`{}` caps: none at all); "
        "PATCH replaces the whole map, null clears it.",
    )

    role: Literal["viewer", "admin"] | None = Field(
        default=None,
        description="Admin role: `viewer` may read the admin API, `admin` may also change it; "
        "null (the default) for none: an API key only. Only an admin can set it.",
    )

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
    end_user_budget: BudgetOut
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
    end_user_budgets: dict[str, BudgetOut]
    role: Literal["viewer", "admin"] | None = Field(description="The key's admin role, if any.")
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
        (
            403,
            "No admin role (`admin_required`), or a `viewer` key changing something (`admin_role_required`).",
        ),
        (404, "No such key or team."),
        (
            503,
            "The key store or the spend ledger is unavailable (`key_store_unavailable`, "
            "`ledger_unavailable`), or the change is saved but the other replicas could not be told "
            "(`invalidation_not_delivered`; the saved resource is in `saved`), or the audit log could not "
            "record a change, which is then not made (`audit_unavailable`).",
        ),
    )
}


def key_changes(body: KeyBody) -> Callable[[KeySettings], KeySettings]:
    """The fields present in `body` applied to a key's settings (creation applies them to defaults)."""
    plain = {"alias", "team_id", "blocked"} & body.model_fields_set
    changes: dict[str, Any] = {name: getattr(body, name) for name in plain}
    if "expires_at" in body.model_fields_set:
        changes["expires_at"] = _utc(body.expires_at)
    if "role" in body.model_fields_set:
        changes["role"] = None if body.role is None else AdminRole(body.role)
    own = None
    if "end_user_budgets" in body.model_fields_set:
        own = {user: (b.daily_usd, b.monthly_usd) for user, b in (body.end_user_budgets or {}).items()}

    def change(current: KeySettings) -> KeySettings:
        shared = _shared_changes(body, current.limits)
        if own is not None:
            shared["limits"] = replace(shared["limits"], end_user_budgets=own)
        return replace(current, **changes, **shared)

    return change


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
    for field, prefix in (("budget", ""), ("end_user_budget", "end_user_")):
        if field in body.model_fields_set:
            changes |= _budget_changes(getattr(body, field), prefix)
    return replace(limits, **changes)


def _budget_changes(sent: BudgetBody | None, prefix: str) -> dict[str, float | None]:
    """The `Limits` fields a sent budget changes: the windows it names, or both when it is null."""
    budget = sent or BudgetBody(daily_usd=None, monthly_usd=None)
    changes: dict[str, float | None] = {}
    if "daily_usd" in budget.model_fields_set or sent is None:
        changes[f"{prefix}daily_budget_usd"] = budget.daily_usd
    if "monthly_usd" in budget.model_fields_set or sent is None:
        changes[f"{prefix}monthly_budget_usd"] = budget.monthly_usd
    return changes


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
        "end_user_budget": BudgetOut(
            daily_usd=limits.end_user_daily_budget_usd, monthly_usd=limits.end_user_monthly_budget_usd
        ),
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
        end_user_budgets={
            user: BudgetOut(daily_usd=daily, monthly_usd=monthly)
            for user, (daily, monthly) in s.limits.end_user_budgets.items()
        },
        metadata=s.metadata,
        blocked=s.blocked,
        role=None if s.role is None else s.role.value,
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


MAX_SPEND_ROWS = 100_000


class SpendRowOut(BaseModel):
    """One group: the dimensions grouped by (only those are present), then the group's sums."""

    day: date | None = None
    key_id: str | None = None
    team_id: str | None = None
    end_user: str | None = None
    model: str | None = None
    provider: str | None = None
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float | None = Field(description="Priced requests only; null when none had a price.")
    unpriced_requests: int = Field(description="Requests whose model had no price: not in `cost_usd`.")


class SpendReportOut(BaseModel):
    """Spend per group over whole UTC days, ordered by the groups."""

    group_by: list[str]
    data: list[SpendRowOut]
    requests: int
    total_cost_usd: float | None = Field(description="Of the priced requests, over every row.")
    unpriced_requests: int
    has_more: bool = Field(description="More groups than `limit`: the totals still cover them all.")


@dataclass(frozen=True, slots=True)
class SpendQuery:
    """A validated spend question, from query parameters or the command line."""

    group_by: tuple[str, ...]
    start: datetime | None
    end: datetime | None
    key_id: str | None = None
    team_id: str | None = None
    limit: int = 10_000


@dataclass(frozen=True, slots=True)
class SpendReport:
    """The answer: the rows, the totals over everything asked (also past `limit`)."""

    query: SpendQuery
    rows: list[SpendRow]
    totals: UsageTotals
    has_more: bool


def spend_query(
    group_by: str,
    start: str | None,
    end: str | None,
    *,
    key_id: str | None = None,
    team_id: str | None = None,
    limit: int = 10_000,
) -> SpendQuery:
    """Parse `group_by` (comma-separated) and the `from` / `to` bounds; InvalidRequestError names the
    parameter at fault."""
    groups = tuple(dict.fromkeys(part.strip() for part in group_by.split(",") if part.strip()))
    unknown = [name for name in groups if name not in GROUP_FIELDS]
    if not groups or unknown:
        problem = f"unknown {', '.join(unknown)}; " if unknown else ""
        raise InvalidRequestError(
            f"group_by: {problem}choose from {', '.join(GROUP_FIELDS)}, comma-separated", param="group_by"
        )
    begins, ends = _instant(start, "from"), _instant(end, "to")
    if begins is not None and ends is not None and ends <= begins:
        raise InvalidRequestError("to: must be after from", param="to")
    return SpendQuery(groups, begins, ends, key_id, team_id, limit)


def _instant(value: str | None, param: str) -> datetime | None:
    """A date (`2026-11-01`, midnight UTC) or an ISO 8601 instant (naive means UTC)."""
    if value is None or not value.strip():
        return None
    try:
        return _utc(datetime.fromisoformat(value.strip()))
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{param}: expected a date (2026-11-01) or an ISO 8601 instant, got {value[:40]!r}", param=param
        ) from None


async def run_spend_query(ledger: SqlLedger, query: SpendQuery) -> SpendReport:
    """Ask the ledger; totals come from the rows unless `limit` cut them, then from one more query."""

    async def ask(group_by: tuple[str, ...], limit: int | None) -> list[SpendRow]:
        return await ledger.spend_report(
            group_by, query.start, query.end, key_id=query.key_id, team_id=query.team_id, limit=limit
        )

    rows = await ask(query.group_by, query.limit + 1)
    if len(rows) <= query.limit:
        totals = UsageTotals(*(sum(getattr(row.totals, name) for row in rows) for name in SUMS))
        return SpendReport(query, rows, totals, has_more=False)
    [everything] = await ask((), None)
    return SpendReport(query, rows[: query.limit], everything.totals, has_more=True)


def spend_columns(query: SpendQuery) -> list[str]:
    """The fields of a report row, in order: the groups as asked, then the sums."""
    return [*(GROUP_FIELDS[name] for name in query.group_by), *SUMS]


def spend_records(report: SpendReport) -> list[dict[str, Any]]:
    """The report's rows as the JSON body's `data`."""
    fields = [GROUP_FIELDS[name] for name in report.query.group_by]
    return [
        {name: getattr(row, name) for name in fields}
        | {
            "requests": row.totals.requests,
            "input_tokens": row.totals.input_tokens,
            "output_tokens": row.totals.output_tokens,
            "cached_tokens": row.totals.cached_tokens,
            "cost_usd": row.cost_usd,
            "unpriced_requests": row.totals.unpriced_requests,
        }
        for row in report.rows
    ]


def spend_json(report: SpendReport) -> bytes:
    """The JSON body (`SpendReportOut`)."""
    body = {
        "group_by": list(report.query.group_by),
        "data": spend_records(report),
        "requests": report.totals.requests,
        "total_cost_usd": report.totals.known_cost_usd,
        "unpriced_requests": report.totals.unpriced_requests,
        "has_more": report.has_more,
    }
    return orjson.dumps(body)


# A spreadsheet runs a cell starting with one of these as a formula; end-user names come from clients.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spend_csv(report: SpendReport) -> str:
    """The CSV body: a header row, then one row per group; a missing value is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = spend_columns(report.query)
    writer.writerow(columns)
    for record in spend_records(report):
        writer.writerow([_cell(record[name]) for name in columns])
    return buffer.getvalue()


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, date) else str(value)
    return "'" + text if isinstance(value, str) and text.startswith(_FORMULA_START) else text


def spend_ledger(request: Request) -> SqlLedger:
    """The spend ledger, on the key store's database (keys, teams and spend share it)."""
    engine = key_service(request).engine
    if engine is None:  # pragma: no cover - the lifespan always opens the key store on an engine
        raise RuntimeError("the key store has no database")
    return open_ledger(engine)


SpendLedger = Annotated[SqlLedger, Depends(spend_ledger)]
Filter = Annotated[str | None, Query(max_length=MAX_TEXT, pattern=PRINTABLE)]  # no stored id is longer


async def spend(
    ledger: SpendLedger,
    group_by: Annotated[
        str, Query(max_length=100, description=f"Comma-separated, any of: {', '.join(GROUP_FIELDS)}.")
    ] = "day",
    start: Annotated[
        str | None, Query(alias="from", max_length=40, description="First UTC day (or instant's day).")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", max_length=40, description="Exclusive at midnight, else its day too.")
    ] = None,
    key_id: Filter = None,
    team_id: Filter = None,
    output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    limit: Annotated[int, Query(ge=1, le=MAX_SPEND_ROWS)] = 10_000,
) -> Response:
    """Spend from the ledger's daily rollup, grouped by key, team, end user, model, provider and / or day."""
    query = spend_query(group_by, start, end, key_id=key_id, team_id=team_id, limit=limit)
    report = await run_spend_query(ledger, query)
    if output == "csv":
        return Response(spend_csv(report), media_type="text/csv; charset=utf-8")
    return Response(spend_json(report), media_type="application/json")


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
    """The `/admin` routes. The role check and the audit record are the router's own (its dependency
    and its route class, `api/audit.py`), so every route added here is governed and audited as is."""
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(admit_admin)],
        responses=_ERRORS,
        route_class=AuditedRoute,
    )
    for method, path, endpoint, status in _ROUTES:
        router.add_api_route(path, endpoint, methods=[method], status_code=status)
    add_deployment_routes(router)  # strategy figures and circuit breakers (api/admin_deployments.py)
    add_model_routes(router)  # runtime models and deployments (api/admin_models.py)
    router.add_api_route(
        "/spend",
        spend,
        methods=["GET"],
        response_model=SpendReportOut,
        responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    )
    add_audit_routes(router)  # GET /audit (api/audit.py)
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
