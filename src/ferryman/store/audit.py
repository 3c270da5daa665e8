"""The admin audit log in SQL: one row per admin action, written before the action and completed after it.

Writing the row *first* (`begin`, status NULL) is what makes the failure policy honest: when the record
cannot be written the action has not happened yet, so the admin API refuses it (503
`audit_unavailable`) instead of changing something nobody can later account for. The outcome is then
filled in (`finish`); if that second write fails, the row stays with a NULL status — "outcome not
recorded" — and the miss is logged, never silently dropped. Every write is bounded by
`AUDIT_WRITE_TIMEOUT`, so a slow database costs an admin call seconds, not an unbounded wait.

Reads are newest first, paged by the row's sequence number (a cursor that stays valid while rows are
added). Like the key repository, this is a boundary: database failures leave as `AuditUnavailableError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ferryman.errors import FerrymanError
from ferryman.store.tables import AuditRow

AUDIT_WRITE_TIMEOUT = 5.0  # seconds: well under any client's timeout, long enough for a busy SQLite
AUDIT_READ_TIMEOUT = 10.0
AUDIT_PRUNE_TIMEOUT = 300.0  # seconds: a first prune of a long-lived gateway deletes years of rows
MAX_AUDIT_PAGE = 1_000
MAX_TARGET_VALUE = 400  # characters of a path parameter kept (refused calls' paths are anyone's input)

log = logging.getLogger("ferryman.audit")


class AuditUnavailableError(FerrymanError):
    """The audit log could not be written (or read) in time; an admin change is refused rather than
    made unrecorded."""

    status = 503
    code = "audit_unavailable"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What is known of an admin action before it runs; `status` is its outcome once known.

    `actor_id` is a key id, `master`, or `None` when no valid key was presented; never a secret.
    """

    at: datetime
    action: str  # method and route template: `PATCH /admin/keys/{key_id}`
    actor_id: str | None = None
    actor_alias: str | None = None
    role: str | None = None
    target: Mapping[str, str] = field(default_factory=dict)
    client_ip: str | None = None
    request_id: str | None = None
    status: int | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored entry and its sequence number (`id`)."""

    id: int
    entry: AuditEntry


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which records to read: a time range (`until` exclusive), an actor (key id or alias), an action,
    and a page (`before`: the sequence number the previous page ended at)."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    limit: int = 100
    before: int | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of records, newest first; `more` says whether older ones match too."""

    records: list[AuditRecord]
    more: bool


def bounded_target(path_params: Mapping[str, object]) -> dict[str, str]:
    """The path parameters as the record keeps them: strings, each cut to `MAX_TARGET_VALUE`."""
    return {str(name): str(value)[:MAX_TARGET_VALUE] for name, value in path_params.items()}


class AuditLog:
    """Writes and reads `admin_audit` on the key store's engine (keys, spend and audit share it)."""

    def __init__(self, engine: AsyncEngine, *, write_timeout: float | None = None) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._write_timeout = AUDIT_WRITE_TIMEOUT if write_timeout is None else write_timeout

    async def begin(self, entry: AuditEntry) -> int:
        """Store `entry` (its outcome still unknown unless `entry.status` is set); its sequence number."""
        row = _row(entry)
        async with _bounded(self._write_timeout, "write"), self._sessions.begin() as session:
            session.add(row)
            await session.flush()  # numbers the row
        return row.seq

    async def finish(self, seq: int, status: int) -> None:
        """Fill in the outcome of the action `begin` recorded."""
        statement = update(AuditRow).where(AuditRow.seq == seq).values(status=status)
        async with _bounded(self._write_timeout, "write"), self._sessions.begin() as session:
            await session.execute(statement)

    async def prune(self, before: datetime) -> int:
        """Delete the records of actions taken before `before` (tz-aware); how many went. The retention
        policy is the operator's (`ferryman audit prune`, from a scheduled job): nothing prunes by itself."""
        if before.utcoffset() is None:
            raise ValueError("before must be timezone-aware")
        statement = delete(AuditRow).where(AuditRow.at < before)
        async with _bounded(AUDIT_PRUNE_TIMEOUT, "write"), self._sessions.begin() as session:
            result = await session.execute(statement)
        return int(getattr(result, "rowcount", 0) or 0)

    async def search(self, query: AuditQuery) -> AuditPage:
        """Records matching `query`, newest first, at most `query.limit` of them."""
        statement = select(AuditRow).order_by(AuditRow.seq.desc()).limit(query.limit + 1)
        if query.since is not None:
            statement = statement.where(AuditRow.at >= query.since)
        if query.until is not None:
            statement = statement.where(AuditRow.at < query.until)
        if query.actor is not None:
            statement = statement.where(
                or_(AuditRow.actor_id == query.actor, AuditRow.actor_alias == query.actor)
            )
        if query.action is not None:
            statement = statement.where(AuditRow.action == query.action)
        if query.before is not None:
            statement = statement.where(AuditRow.seq < query.before)
        async with _bounded(AUDIT_READ_TIMEOUT, "read"), self._sessions() as session:
            rows = list(await session.scalars(statement))
        return AuditPage([_record(row) for row in rows[: query.limit]], more=len(rows) > query.limit)


@asynccontextmanager
async def _bounded(seconds: float, what: str) -> AsyncIterator[None]:
    """A deadline around one audit statement; running out of time, and the database's and the driver's
    failures, leave as AuditUnavailableError."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:  # before OSError, which it is a subclass of
        log.warning("audit log %s timed out after %ss", what, seconds)
        raise AuditUnavailableError(f"The audit log did not answer in time ({what}).") from exc
    except (SQLAlchemyError, OSError) as exc:
        log.warning("audit log %s failed: %s", what, type(exc).__name__)
        raise AuditUnavailableError(f"The audit log is unavailable ({what}).") from exc


def _row(entry: AuditEntry) -> AuditRow:
    return AuditRow(
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


def _record(row: AuditRow) -> AuditRecord:
    return AuditRecord(
        id=row.seq,
        entry=AuditEntry(
            at=row.at,
            action=row.action,
            actor_id=row.actor_id,
            actor_alias=row.actor_alias,
            role=row.role,
            target={str(name): str(value) for name, value in (row.target or {}).items()},
            client_ip=row.client_ip,
            request_id=row.request_id,
            status=row.status,
        ),
    )
