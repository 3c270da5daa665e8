"""`ferryman db …`, `keys …`, `teams …`, `audit prune` and `spend`: the admin API for people without curl.

The commands talk to the database directly (and publish revocations to Redis when it is configured, so
running replicas drop a revoked key at once). Options mirror the admin API's body fields; output is the
same JSON the API returns. A new key's secret is printed once, at creation or rotation. `ferryman spend`
asks the spend ledger what `GET /admin/spend` asks, and prints a table, that JSON or that CSV.

A change made here is in the admin audit log as one made through the API is (written before it runs,
refused when it cannot be, its outcome after), with `cli` as the actor and the operating-system user
who ran it as the alias: whoever can reach the database can change keys, and the log says who did.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from ferryman.api.admin import (
    MAX_SPEND_ROWS,
    KeyBody,
    KeyList,
    SpendQuery,
    SpendReport,
    TeamBody,
    TeamList,
    key_changes,
    key_created,
    key_out,
    run_spend_query,
    spend_columns,
    spend_csv,
    spend_json,
    spend_query,
    spend_records,
    team_changes,
    team_out,
)
from ferryman.api.audit import log_record
from ferryman.errors import ConfigError, FerrymanError, InvalidationNotDeliveredError, InvalidRequestError
from ferryman.settings import Settings, load_settings
from ferryman.store.audit import AuditEntry, AuditLog, AuditUnavailableError
from ferryman.store.database import open_engine
from ferryman.store.migrate import ensure_schema, head_revision, schema_revision, upgrade_schema
from ferryman.store.records import KeySettings, TeamSettings
from ferryman.store.service import KeyService
from ferryman.store.sql_ledger import GROUP_FIELDS, SqlLedger

Saved = TypeVar("Saved")

Operation = Callable[[KeyService, argparse.Namespace], Awaitable[BaseModel]]


def add_admin_commands(commands: Any) -> None:
    """Register `db`, `audit`, `keys` and `teams` on the main parser's subcommands."""
    db = commands.add_parser("db", help="database schema migrations").add_subparsers(
        dest="action", required=True
    )
    upgrade = _with_config(
        db.add_parser("upgrade", help="apply pending migrations (under the migration lock)")
    )
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    _with_config(db.add_parser("status", help="show the schema revision and the newest one; 1 if behind"))
    audit = commands.add_parser("audit", help="the admin audit log").add_subparsers(
        dest="action", required=True
    )
    prune = _with_config(audit.add_parser("prune", help="delete records older than a number of days"))
    prune.add_argument(
        "--older-than-days", type=int, required=True, help="keep this many days of records (at least 1)"
    )
    _add_key_commands(
        commands.add_parser("keys", help="virtual keys").add_subparsers(dest="action", required=True)
    )
    _add_team_commands(
        commands.add_parser("teams", help="teams").add_subparsers(dest="action", required=True)
    )
    _add_spend_command(commands.add_parser("spend", help="spend from the ledger, as GET /admin/spend"))


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=True, help="the YAML config file naming database_url")
    return parser


def _add_rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alias")
    parser.add_argument("--models", help="comma-separated model names or `*` patterns")
    parser.add_argument("--all-models", action="store_true", help="remove the model allow-list")
    parser.add_argument("--rpm-limit", type=int)
    parser.add_argument("--tpm-limit", type=int)
    parser.add_argument("--max-parallel", type=int)
    parser.add_argument("--daily-budget-usd", type=float)
    parser.add_argument("--monthly-budget-usd", type=float)
    parser.add_argument("--metadata", help="a JSON object")
    parser.add_argument("--blocked", action="store_true", default=None, help="refuse the key or team")
    parser.add_argument("--unblocked", dest="blocked", action="store_false", help="accept it again")


def _add_key_commands(keys: Any) -> None:
    for name in ("create", "update"):
        parser = _with_config(keys.add_parser(name, help=f"{name} a key"))
        if name == "update":
            parser.add_argument("id")
        _add_rule_options(parser)
        parser.add_argument("--team-id")
        parser.add_argument("--expires-at", help="ISO 8601 instant, e.g. 2026-01-01T00:00:00Z")
        roles = parser.add_mutually_exclusive_group()
        roles.add_argument(
            "--role", choices=("viewer", "admin"), help="viewer reads the admin API, admin also changes it"
        )
        roles.add_argument("--no-role", dest="role", action="store_const", const="", help="remove the role")
    listing = _with_config(keys.add_parser("list", help="list keys"))
    listing.add_argument("--team-id")
    listing.add_argument("--include-revoked", action="store_true")
    for name, text in (
        ("show", "show a key"),
        ("rotate", "new secret, same key"),
        ("revoke", "revoke for good"),
    ):
        _with_config(keys.add_parser(name, help=text)).add_argument("id")
    keys.add_parser("hash", help="print the SHA-256 of a key read from stdin (for `keys:` in the config)")


def _add_team_commands(teams: Any) -> None:
    for name in ("create", "update"):
        parser = _with_config(teams.add_parser(name, help=f"{name} a team"))
        if name == "update":
            parser.add_argument("id")
        _add_rule_options(parser)
    _with_config(teams.add_parser("list", help="list teams"))
    for name in ("show", "delete"):
        _with_config(teams.add_parser(name, help=f"{name} a team")).add_argument("id")


def _add_spend_command(spend: argparse.ArgumentParser) -> None:
    _with_config(spend)
    spend.add_argument("--group-by", default="day", help=f"comma-separated: {', '.join(GROUP_FIELDS)}")
    spend.add_argument("--from", dest="start", help="first UTC day, e.g. 2026-11-01, or an ISO 8601 instant")
    spend.add_argument("--to", dest="end", help="end: exclusive at midnight (2026-12-01), else its day too")
    spend.add_argument("--key-id", help="only this key")
    spend.add_argument("--team-id", help="only this team")
    spend.add_argument("--limit", type=int, default=10_000, help="at most this many rows (default 10000)")
    spend.add_argument("--format", dest="output", choices=("table", "json", "csv"), default="table")


def run_admin_command(args: argparse.Namespace) -> int:
    """Run a `db`, `keys`, `teams` or `spend` command; 0 on success, 1 on a refused operation, 2 on bad
    input."""
    if args.command == "spend":
        return _spend_command(args)
    if args.command == "keys" and args.action == "hash":
        secret = sys.stdin.readline().strip()
        print(hashlib.sha256(secret.encode()).hexdigest())
        return 0
    try:
        settings = load_settings(args.config)
        if not settings.database_url and settings.data_dir == ":memory:":
            raise ConfigError([("database_url", "this command needs a database that outlives it")])
        if args.command == "db":
            return asyncio.run(_db_command(settings, args))
        operation = _OPERATIONS[args.command][args.action]
        result = asyncio.run(_with_service(settings, operation, args))
    except ConfigError as exc:
        for path, message in exc.problems:
            print(f"{args.config}: {path}: {message}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for error in exc.errors():
            print(f"error: {'.'.join(str(p) for p in error['loc'])}: {error['msg']}", file=sys.stderr)
        return 2
    except FerrymanError as exc:
        if isinstance(exc, InvalidationNotDeliveredError) and isinstance(exc.saved, BaseModel):
            print(exc.saved.model_dump_json(indent=2))  # saved all the same: show what was saved
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(result.model_dump_json(indent=2))
    return 0


async def _db_command(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.store_url
    if args.action == "upgrade":
        await upgrade_schema(url, args.revision)
    current = await schema_revision(url)
    head = head_revision()
    print(f"schema revision: {current or '(empty)'}; newest: {head}")
    return 0 if current == head or args.action == "upgrade" else 1


def _spend_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        if not 1 <= args.limit <= MAX_SPEND_ROWS:
            raise InvalidRequestError(f"limit: between 1 and {MAX_SPEND_ROWS}", param="limit")
        query = spend_query(
            args.group_by, args.start, args.end, key_id=args.key_id, team_id=args.team_id, limit=args.limit
        )
    except ConfigError as exc:
        for path, message in exc.problems:
            print(f"{args.config}: {path}: {message}", file=sys.stderr)
        return 2
    except InvalidRequestError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_spend_report(settings, query))
    except FerrymanError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(json.loads(spend_json(report)), indent=2))
    elif args.output == "csv":
        sys.stdout.write(spend_csv(report))
    else:
        print(spend_table(report))
    return 0


async def _spend_report(settings: Settings, query: SpendQuery) -> SpendReport:
    """The report from the config's database, after migrating (or checking) its schema as `serve` does."""
    url = settings.store_url
    engine = open_engine(url)
    try:
        await ensure_schema(url, auto_migrate=settings.auto_migrate, engine=engine)
        return await run_spend_query(SqlLedger(engine), query)
    finally:
        await engine.dispose()


def spend_table(report: SpendReport) -> str:
    """The report for a terminal: aligned columns (groups left, sums right), then the totals."""
    columns = spend_columns(report.query)
    grouped = len(report.query.group_by)
    cells = [columns, *([_shown(record[name]) for name in columns] for record in spend_records(report))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < grouped else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    totals = report.totals
    cost = _shown(totals.known_cost_usd)
    lines.append(f"total: {totals.requests} requests, ${cost} priced, {totals.unpriced_requests} unpriced")
    if report.has_more:
        lines.append(f"(only the first {report.query.limit} rows are shown; the total covers them all)")
    return "\n".join(lines)


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    return value.isoformat() if isinstance(value, date) else str(value)


async def _with_service(settings: Settings, operation: Operation, args: argparse.Namespace) -> BaseModel:
    service = await KeyService.open(settings, listen=False)
    try:
        if args.action in _READ_ONLY:
            return await operation(service, args)
        return await _audited(service, operation, args)
    finally:
        await service.aclose()


async def _audited(service: KeyService, operation: Operation, args: argparse.Namespace) -> BaseModel:
    """Run a change as the admin API does: its audit record first (no record, no change), then the
    change, then its outcome (the status the API would have answered)."""
    assert service.engine is not None  # noqa: S101 - run_admin_command demands a database
    target_id = getattr(args, "id", None)
    entry = AuditEntry(
        at=datetime.now(UTC),
        action=f"CLI {args.command} {args.action}",
        actor_id="cli",
        actor_alias=_operator(),
        role="admin",
        target={} if target_id is None else {_TARGET_NAMES[args.command]: str(target_id)},
    )
    audit = AuditLog(service.engine)
    try:
        seq = await audit.begin(entry)
    except AuditUnavailableError:
        log_record(entry, None, level=logging.ERROR, note="audit record not written; change refused")
        raise
    status = 500
    try:
        result = await operation(service, args)
        status = 200
        return result
    except FerrymanError as exc:
        status = exc.status
        raise
    except ValidationError:  # the body the options make is invalid: the API's 400
        status = 400
        raise
    finally:
        entry = replace(entry, status=status)
        try:
            await audit.finish(seq, status)
        except AuditUnavailableError:
            log_record(entry, seq, level=logging.ERROR, note="audit outcome not written")
        else:
            log_record(entry, seq)


def _operator() -> str | None:
    """Who ran the command, as the operating system knows them (None in a container without a user)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def _rule_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as an admin API body (absent options stay absent)."""
    body: dict[str, Any] = {}
    for option in ("alias", "rpm_limit", "tpm_limit", "max_parallel", "blocked", "team_id", "expires_at"):
        value = getattr(args, option, None)
        if value is not None:
            body[option] = value
    role = getattr(args, "role", None)
    if role is not None:
        body["role"] = role or None  # `--no-role`: the empty string, for "remove it"
    if args.all_models:
        body["models"] = None
    elif args.models is not None:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    budget = {
        name: value
        for name, value in (("daily_usd", args.daily_budget_usd), ("monthly_usd", args.monthly_budget_usd))
        if value is not None
    }
    if budget:
        body["budget"] = budget
    if args.metadata is not None:
        body["metadata"] = json.loads(args.metadata)
    return body


async def _create_key(service: KeyService, args: argparse.Namespace) -> BaseModel:
    body = KeyBody.model_validate(_rule_fields(args))
    return key_created(await service.create_key(key_changes(body)(KeySettings())))


async def _update_key(service: KeyService, args: argparse.Namespace) -> BaseModel:
    change = key_changes(KeyBody.model_validate(_rule_fields(args)))
    return await _announced(service.update_key(args.id, change), key_out)


async def _list_keys(service: KeyService, args: argparse.Namespace) -> BaseModel:
    records = await service.repository.list_keys(team_id=args.team_id, include_revoked=args.include_revoked)
    return KeyList(data=[key_out(r) for r in records])


async def _show_key(service: KeyService, args: argparse.Namespace) -> BaseModel:
    return key_out(await service.repository.get_key(args.id))


async def _rotate_key(service: KeyService, args: argparse.Namespace) -> BaseModel:
    return await _announced(service.rotate_key(args.id), key_created)


async def _revoke_key(service: KeyService, args: argparse.Namespace) -> BaseModel:
    return await _announced(service.revoke_key(args.id), key_out)


async def _create_team(service: KeyService, args: argparse.Namespace) -> BaseModel:
    body = TeamBody.model_validate(_rule_fields(args))
    return team_out(await service.repository.create_team(team_changes(body)(TeamSettings())))


async def _update_team(service: KeyService, args: argparse.Namespace) -> BaseModel:
    change = team_changes(TeamBody.model_validate(_rule_fields(args)))
    return await _announced(service.update_team(args.id, change), team_out)


async def _list_teams(service: KeyService, args: argparse.Namespace) -> BaseModel:
    return TeamList(data=[team_out(r) for r in await service.repository.list_teams()])


async def _show_team(service: KeyService, args: argparse.Namespace) -> BaseModel:
    return team_out(await service.repository.get_team(args.id))


async def _delete_team(service: KeyService, args: argparse.Namespace) -> BaseModel:
    return await _announced(service.delete_team(args.id), team_out)


async def _announced(change: Awaitable[Saved], show: Callable[[Saved], BaseModel]) -> BaseModel:
    """`show(await change)`; when the change is saved but other replicas could not be told, the error
    still carries the saved result, shown, so the operator sees it (a rotated secret exists nowhere else)."""
    try:
        return show(await change)
    except InvalidationNotDeliveredError as exc:
        raise InvalidationNotDeliveredError(exc.message, saved=show(cast(Saved, exc.saved))) from exc


class AuditPruned(BaseModel):
    """What `ferryman audit prune` removed."""

    deleted: int
    before: datetime


async def _prune_audit(service: KeyService, args: argparse.Namespace) -> BaseModel:
    if args.older_than_days < 1:
        raise InvalidRequestError("--older-than-days must be at least 1", param="older_than_days")
    assert service.engine is not None  # noqa: S101 - run_admin_command demands a database
    before = datetime.now(UTC) - timedelta(days=args.older_than_days)
    return AuditPruned(deleted=await AuditLog(service.engine).prune(before), before=before)


_READ_ONLY = frozenset({"list", "show"})
_TARGET_NAMES = {"keys": "key_id", "teams": "team_id"}  # the admin API's path parameter names
_KEY_OPERATIONS: dict[str, Operation] = {
    "create": _create_key,
    "update": _update_key,
    "list": _list_keys,
    "show": _show_key,
    "rotate": _rotate_key,
    "revoke": _revoke_key,
}
_TEAM_OPERATIONS: dict[str, Operation] = {
    "create": _create_team,
    "update": _update_team,
    "list": _list_teams,
    "show": _show_team,
    "delete": _delete_team,
}
_OPERATIONS: dict[str, dict[str, Operation]] = {
    "keys": _KEY_OPERATIONS,
    "teams": _TEAM_OPERATIONS,
    "audit": {"prune": _prune_audit},
}
