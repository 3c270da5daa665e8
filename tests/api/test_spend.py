"""`GET /admin/spend` and `ferryman spend` on SQLite and a real PostgreSQL: spend grouped any way, as
JSON and CSV, unpriced requests never shown as $0, bad parameters named, the master key only.

The ledger rows are written with `SqlLedger.append_many` into the database the gateway uses, as the
Redis feeder or the embedded writer would; the route reads them through its own `SqlLedger`."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ferryman.api.admin import SpendReportOut
from ferryman.cli_keys import add_admin_commands, run_admin_command
from ferryman.core.shared_state import SpendEntry
from ferryman.store.database import open_engine
from ferryman.store.sql_ledger import SqlLedger
from tests.conftest import RunningGateway, serve_gateway

MASTER = "admin-master-key-for-spend-tests"
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
RUN = uuid.uuid4().hex[:8]
TEAM = f"team-{RUN}"
KEYS = (f"key-{RUN}-a", f"key-{RUN}-b")
FIRST_DAY = date(2026, 11, 1)


def dataset() -> list[SpendEntry]:
    """Three days, two keys, end users (one named like a spreadsheet formula), two providers, and
    an unpriced model."""
    entries = []
    for n in range(36):
        model, provider, cost = [
            ("gpt-4o-mini", "openai", 0.25),
            ("claude-sonnet", "anthropic", 0.5),
            ("mystery", "openai", None),
        ][n % 3]
        entries.append(
            SpendEntry(
                request_id=f"req_{RUN}_{n}",
                at=datetime(2026, 11, 1, 6, tzinfo=UTC) + timedelta(hours=2 * n),
                model=model,
                provider=provider,
                deployment=f"{provider}/{model}",
                key_id=KEYS[n % 2],
                team_id=TEAM,
                end_user=[None, "ana", "=HYPERLINK()"][n % 4 % 3],
                input_tokens=100 + n,
                output_tokens=10,
                cached_tokens=n % 5,
                cost_usd=cost,
            )
        )
    return entries


def expected(group_by: list[str]) -> list[dict[str, Any]]:
    """The report computed here from the dataset, independently of SQL."""
    fields = {"key": "key_id", "team": "team_id", "end_user": "end_user", "model": "model"}
    fields |= {"provider": "provider", "day": "day"}
    groups: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: (
            {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0}
            | {"cost_usd": 0.0, "unpriced_requests": 0}
        )
    )
    for entry in dataset():
        values = {**vars_of(entry), "day": entry.at.date().isoformat()}
        key = tuple(values[fields[name]] for name in group_by)
        row = groups[key]
        row.update({fields[name]: values[fields[name]] for name in group_by})
        row["requests"] += 1
        row["input_tokens"] += entry.input_tokens
        row["output_tokens"] += entry.output_tokens
        row["cached_tokens"] += entry.cached_tokens
        if entry.cost_usd is None:
            row["unpriced_requests"] += 1
        else:
            row["cost_usd"] += entry.cost_usd
    for row in groups.values():
        if row["requests"] == row["unpriced_requests"]:
            row["cost_usd"] = None
    return list(groups.values())


def vars_of(entry: SpendEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in ("key_id", "team_id", "end_user", "model", "provider")}


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[RunningGateway]:
    with serve_gateway({"master_key": MASTER, "database_url": database_url, "models": [FAKE]}) as running:
        yield running  # started first: its lifespan migrates the database


@pytest.fixture(scope="module")
def seeded(gateway: RunningGateway, database_url: str) -> str:
    async def write() -> None:
        engine = open_engine(database_url)
        try:
            ledger = SqlLedger(engine)
            assert await ledger.append_many(dataset()) == 36
            assert await ledger.append_many(dataset()) == 0  # a replay changes nothing
        finally:
            await engine.dispose()

    asyncio.run(write())
    return database_url


@pytest.fixture
def admin(gateway: RunningGateway, seeded: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
    ) as client:
        yield client


def report(admin: httpx.Client, **params: Any) -> dict[str, Any]:
    response = admin.get("/admin/spend", params={"team_id": TEAM, **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    SpendReportOut.model_validate(body)  # the documented shape
    return dict(body)


@pytest.mark.parametrize(
    "group_by",
    [["key", "day"], ["model"], ["provider", "model"], ["end_user"], ["team"], ["day", "key", "model"]],
)
def test_spend_groups_as_asked_and_sums_exactly(admin: httpx.Client, group_by: list[str]) -> None:
    body = report(admin, group_by=",".join(group_by), **{"from": "2026-11-01", "to": "2026-12-01"})
    assert body["group_by"] == group_by
    assert unordered(body["data"]) == unordered(expected(group_by))
    if "day" in group_by:  # ordered by the groups (text columns follow the database's collation)
        days = [row["day"] for row in body["data"]] if group_by[0] == "day" else []
        assert days == sorted(days)
    assert body["requests"] == 36 and body["unpriced_requests"] == 12
    assert body["total_cost_usd"] == pytest.approx(12 * 0.25 + 12 * 0.5)
    assert body["has_more"] is False


def unordered(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, Any], ...]]:
    """Rows as comparable tuples, costs rounded (float sums differ in the last bits by order), sorted."""
    rounded = [{k: round(v, 9) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    return sorted((tuple(sorted(row.items())) for row in rounded), key=repr)


def test_an_unpriced_model_shows_null_cost_and_its_count_never_zero_dollars(admin: httpx.Client) -> None:
    rows = {row["model"]: row for row in report(admin, group_by="model")["data"]}
    assert rows["mystery"]["cost_usd"] is None
    assert rows["mystery"]["unpriced_requests"] == rows["mystery"]["requests"] == 12
    assert rows["gpt-4o-mini"]["cost_usd"] == pytest.approx(3.0)


def test_the_window_is_whole_days_and_to_is_exclusive_at_midnight(admin: httpx.Client) -> None:
    one_day = report(admin, group_by="day", **{"from": "2026-11-02", "to": "2026-11-03"})
    assert [row["day"] for row in one_day["data"]] == ["2026-11-02"]
    assert one_day["requests"] == 12
    instants = report(
        admin, group_by="day", **{"from": "2026-11-02T13:00:00Z", "to": "2026-11-02T14:00:00+00:00"}
    )
    assert [row["day"] for row in instants["data"]] == ["2026-11-02"]  # the instants' whole day
    by_key = report(admin, group_by="day", key_id=KEYS[0])
    assert by_key["requests"] == 18


def test_csv_has_a_header_and_one_row_per_group(admin: httpx.Client) -> None:
    response = admin.get(
        "/admin/spend", params={"team_id": TEAM, "group_by": "end_user,model", "format": "csv"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    header = ["end_user", "model", "requests", "input_tokens", "output_tokens", "cached_tokens"]
    assert rows[0] == [*header, "cost_usd", "unpriced_requests"]
    wanted = expected(["end_user", "model"])
    assert len(rows) == 1 + len(wanted)
    assert sorted(int(r[2]) for r in rows[1:]) == sorted(row["requests"] for row in wanted)
    users = {r[0] for r in rows[1:]}
    assert users == {"", "ana", "'=HYPERLINK()"}  # no end user is empty; a formula is defused
    unpriced = [r for r in rows[1:] if r[1] == "mystery"]
    assert all(r[6] == "" and int(r[7]) > 0 for r in unpriced)  # unknown cost: empty, never 0


def test_a_limit_cuts_the_rows_but_not_the_totals(admin: httpx.Client) -> None:
    body = report(admin, group_by="key,day", limit=2)
    assert len(body["data"]) == 2 and body["has_more"] is True
    assert body["requests"] == 36 and body["unpriced_requests"] == 12


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"group_by": " , "}, "group_by"),
        ({"group_by": "key," * 40}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-11-05", "to": "2026-11-01"}, "to"),
        ({"format": "xml"}, "format"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100001"}, "limit"),
        ({"key_id": "k" * 201}, "key_id"),
        ({"team_id": "bad\x01id"}, "team_id"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(admin: httpx.Client, params: dict[str, str], param: str) -> None:
    response = admin.get("/admin/spend", params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error"


def test_only_the_master_key_may_read_spend(gateway: RunningGateway, admin: httpx.Client) -> None:
    created = admin.post("/admin/keys", json={"alias": "client"})
    assert created.status_code == 201
    client_key = created.json()["key"]
    refused = httpx.get(gateway.url + "/admin/spend", headers={"authorization": f"Bearer {client_key}"})
    assert refused.status_code == 403
    assert httpx.get(gateway.url + "/admin/spend").status_code == 401


def test_the_route_is_documented(admin: httpx.Client) -> None:
    operation = admin.get("/openapi.json").json()["paths"]["/admin/spend"]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"group_by", "from", "to", "format", "key_id", "team_id", "limit"} <= names
    assert "text/csv" in operation["responses"]["200"]["content"]


@pytest.fixture
def config(seeded: str, tmp_path: Path) -> str:
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump({"database_url": seeded, "models": []}))
    return str(path)


def spend_command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`ferryman spend …` as the main parser runs it (`cli.main` hands `spend` to `run_admin_command`)."""
    parser = argparse.ArgumentParser(prog="ferryman")
    add_admin_commands(parser.add_subparsers(dest="command"))
    code = run_admin_command(parser.parse_args(["spend", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_ferryman_spend_prints_a_table_json_and_csv(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    window = ["--config", config, "--team-id", TEAM, "--from", "2026-11-01", "--to", "2026-12-01"]
    code, table, _ = spend_command(capsys, *window, "--group-by", "key,model")
    assert code == 0
    lines = table.splitlines()
    assert lines[0].split() == [
        "key_id",
        "model",
        *"requests input_tokens output_tokens".split(),
        *"cached_tokens cost_usd unpriced_requests".split(),
    ]
    assert len(lines) == 1 + len(expected(["key", "model"])) + 1
    assert lines[-1] == "total: 36 requests, $9.000000 priced, 12 unpriced"
    assert any(line.split()[:2] == [KEYS[0], "mystery"] and line.split()[-2] == "-" for line in lines)
    code, out, _ = spend_command(capsys, *window, "--group-by", "model", "--format", "json")
    body = json.loads(out)
    assert code == 0 and unordered(body["data"]) == unordered(expected(["model"]))
    code, out, _ = spend_command(capsys, *window, "--group-by", "day", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("2026-11-01,9,")  # 06:00 to 22:00, every 2 h


def test_ferryman_spend_names_a_bad_option(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = spend_command(capsys, "--config", config, "--group-by", "colour")
    assert code == 2 and "group_by" in err
    code, _, err = spend_command(capsys, "--config", config, "--from", "soon")
    assert code == 2 and "from" in err
    code, _, err = spend_command(capsys, "--config", config, "--limit", "0")
    assert code == 2 and "limit" in err
