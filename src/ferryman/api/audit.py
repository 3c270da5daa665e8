"""Who may do what on `/admin/`, and the audit log of every change: one router dependency, one route class.

Both sit on the admin router itself (`admin_router()`), so a route added there later is governed and
recorded without doing anything:

- `admit_admin`, the router's dependency, authenticates the caller and checks its role against the HTTP
  method (`Authenticator.authorize_admin`). For a method that changes something (POST, PUT, PATCH,
  DELETE) it writes the audit record *before* the endpoint runs; if that write fails the change is
  refused with 503 `audit_unavailable`, because an admin change nobody can account for is worse than a
  retry. A refused call (401, 403) is recorded too, as refused.
- `AuditedRoute`, the router's route class, fills in the outcome (the response's status code) when the
  response starts, so the record is complete before the client hears back, and logs one structured
  line per record (logger `ferryman.audit`).

A record names the action by method and route template (`PATCH /admin/keys/{key_id}`), its target by
the path parameters, the actor by key id and alias (`master` for the master key), and carries the
client's address (as `api/client_ip.py` resolved it: `X-Forwarded-For` only from trusted proxies) and
the request id. Never a secret, a header or a request body.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from ferryman.api.state import AppState
from ferryman.core.caller import Caller
from ferryman.errors import FerrymanError, InvalidRequestError
from ferryman.store.audit import (
    MAX_AUDIT_PAGE,
    AuditEntry,
    AuditLog,
    AuditQuery,
    AuditRecord,
    AuditUnavailableError,
    bounded_target,
)

CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
_DRAFT = "ferryman_audit"  # the request's pending record, in the ASGI scope's state

log = logging.getLogger("ferryman.audit")


@dataclass(slots=True)
class _Draft:
    """A record in the making: `seq` once written ahead of the action, `None` for a refusal (written
    whole, with its status, when the response starts)."""

    entry: AuditEntry
    seq: int | None = None


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.ferryman
    return state


def audit_log(state: AppState) -> AuditLog:
    """The audit log on the key store's database."""
    engine = state.keys.engine if state.keys is not None else None
    if engine is None:  # pragma: no cover - the lifespan always opens the key store on an engine
        raise RuntimeError("the key store has no database")
    return AuditLog(engine)


def _entry(request: Request, caller: Caller | None) -> AuditEntry:
    route = request.scope.get("route")
    template = getattr(route, "path_format", None) or request.url.path
    # The route's own parameters only: the scope's also hold the outer app's (`/admin/{rest:path}`).
    names = getattr(route, "param_convertors", {})
    client = request.client
    return AuditEntry(
        at=datetime.now(UTC),
        action=f"{request.method} {template}",
        # Only the master key (and the open gateway's anonymous caller) has no key id: named by alias.
        actor_id=None if caller is None else (caller.key_id or caller.key_alias),
        actor_alias=None if caller is None else caller.key_alias,
        role=None if caller is None or caller.role is None else caller.role.value,
        target=bounded_target({k: v for k, v in request.path_params.items() if k in names}),
        client_ip=client.host if client is not None else None,
        request_id=request.scope.get("state", {}).get("request_id"),
    )


async def admit_admin(request: Request) -> None:
    """The admin router's dependency: authenticate, authorise by role and method, and for a change,
    write its audit record ahead of it (503 `audit_unavailable` when that cannot be done)."""
    state = _state(request)
    changing = request.method in CHANGING_METHODS
    caller: Caller | None = None
    try:
        caller = await state.auth.authenticate(request)
        state.auth.authorize_admin(caller, request.method)
    except FerrymanError:
        if changing:  # a refused attempt is recorded, with its status, when the refusal goes out
            request.scope.setdefault("state", {})[_DRAFT] = _Draft(_entry(request, caller))
        raise
    if not changing:
        return
    entry = _entry(request, caller)
    try:
        seq = await audit_log(state).begin(entry)
    except AuditUnavailableError:
        log_record(entry, None, level=logging.ERROR, note="audit record not written; change refused")
        raise
    request.scope.setdefault("state", {})[_DRAFT] = _Draft(entry, seq)


class AuditedRoute(APIRoute):
    """An admin route whose audit record, if its dependency began one, is completed with the response's
    status before the response goes out (500 if the endpoint failed without sending one).

    `handle` is the seam: FastAPI calls it for a route served directly and for one reached through an
    included router alike (which builds its own app for the route, so wrapping `self.app` is not enough).
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, completing its audit record as the response starts."""

        async def send_after_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                await _complete(scope, int(message["status"]))
            await send(message)

        try:
            await super().handle(scope, receive, send_after_recording)
        except Exception:
            await _complete(scope, 500)  # nothing was sent: the server's last resort answers 500
            raise


async def _complete(scope: Scope, status: int) -> None:
    """Write the outcome of the request's pending record (once); a failure is logged, never raised:
    the action has happened, and its record already says so (with no status)."""
    draft = scope.get("state", {}).pop(_DRAFT, None)
    if not isinstance(draft, _Draft):
        return
    entry = replace(draft.entry, status=status)
    audit = audit_log(scope["app"].state.ferryman)
    try:
        if draft.seq is None:
            seq: int | None = await audit.begin(entry)
        else:
            seq = draft.seq
            await audit.finish(draft.seq, status)
    except AuditUnavailableError:
        log_record(entry, draft.seq, level=logging.ERROR, note="audit outcome not written")
        return
    log_record(entry, seq)


def log_record(entry: AuditEntry, seq: int | None, *, level: int = logging.INFO, note: str = "") -> None:
    """One structured line per audit record (`ferryman.audit`), with every field of the record."""
    log.log(
        level,
        "admin action%s",
        f" ({note})" if note else "",
        extra={
            "audit_id": seq,
            "action": entry.action,
            "target": dict(entry.target),
            "actor_id": entry.actor_id,
            "actor_alias": entry.actor_alias,
            "role": entry.role,
            "status": entry.status,
            "client_ip": entry.client_ip,
            "at": entry.at.isoformat(),
        },
    )


class AuditRecordOut(BaseModel):
    """One admin action."""

    id: int = Field(description="Increasing with each record.")
    at: datetime = Field(description="When the action was attempted (UTC).")
    actor_id: str | None = Field(description="The key id, `master`, or null when no valid key was sent.")
    actor_alias: str | None = Field(description="The key's alias (or `key:<id>`); `master` for the master.")
    role: str | None = Field(description="The actor's admin role at the time: `admin`, `viewer` or null.")
    action: str = Field(description="Method and route template, e.g. `PATCH /admin/keys/{key_id}`.")
    target: dict[str, str] = Field(description='The route\'s path parameters (`{"key_id": "…"}`).')
    status: int | None = Field(description="The response's status code; null if it could not be recorded.")
    client_ip: str | None = Field(description="The client's address (X-Forwarded-For from trusted proxies).")
    request_id: str | None = Field(description="The request's `x-request-id`.")


class AuditPageOut(BaseModel):
    """Audit records, newest first."""

    data: list[AuditRecordOut]
    has_more: bool = Field(description="Older records match too: ask again with `cursor`.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


def record_out(record: AuditRecord) -> AuditRecordOut:
    """A stored record as the API shows it."""
    entry = record.entry
    return AuditRecordOut(
        id=record.id,
        at=entry.at,
        actor_id=entry.actor_id,
        actor_alias=entry.actor_alias,
        role=entry.role,
        action=entry.action,
        target=dict(entry.target),
        status=entry.status,
        client_ip=entry.client_ip,
        request_id=entry.request_id,
    )


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _cursor(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise InvalidRequestError("cursor: not a cursor this API returned", param="cursor")
    return int(value)


async def list_audit(
    request: Request,
    since: Annotated[datetime | None, Query(description="From this instant (ISO 8601, naive: UTC).")] = None,
    until: Annotated[datetime | None, Query(description="Before this instant (exclusive).")] = None,
    actor: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE, description="A key id, alias, or `master`.")
    ] = None,
    action: Annotated[
        str | None, Query(max_length=500, pattern=PRINTABLE, description="E.g. `POST /admin/keys`.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=40, description="`next_cursor` of the last page.")] = None,
) -> AuditPageOut:
    """The admin audit log, newest first: every change made (or refused) through the admin API."""
    try:
        bounds = _utc(since), _utc(until)
    except OverflowError:
        raise InvalidRequestError("since / until: out of range in UTC", param="since") from None
    query = AuditQuery(*bounds, actor=actor, action=action, limit=limit, before=_cursor(cursor))
    page = await audit_log(_state(request)).search(query)
    last = page.records[-1].id if page.records else None
    return AuditPageOut(
        data=[record_out(record) for record in page.records],
        has_more=page.more,
        next_cursor=str(last) if page.more and last is not None else None,
    )


def add_audit_routes(router: APIRouter) -> None:
    """`GET /audit` on the admin router (viewers and admins)."""
    router.add_api_route("/audit", list_audit, methods=["GET"], response_model=AuditPageOut)
