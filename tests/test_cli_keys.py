"""`ferryman db`, `keys` and `teams`: the admin API's operations from the command line, on a real database."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from ferryman.cli import main
from ferryman.store.audit import AuditEntry, AuditLog
from ferryman.store.database import open_engine
from ferryman.store.migrate import head_revision
from tests.store.fixtures import throwaway_redis


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ferryman.yaml"
    settings = {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}", "models": []}
    path.write_text(yaml.safe_dump(settings))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.startswith(("{", "[")) else out, err


def test_key_lifecycle(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    code, team, _ = run(
        capsys, "teams", "create", "--config", c, "--alias", "ops", "--models", "gpt-*,claude-*"
    )
    assert code == 0 and team["models"] == ["gpt-*", "claude-*"]
    code, key, _ = run(
        capsys, "keys", "create", "--config", c, "--alias", "cron", "--team-id", team["id"],
        "--rpm-limit", "30", "--daily-budget-usd", "2.5", "--metadata", '{"owner": "ops"}',
        "--expires-at", "2999-01-01T00:00:00Z",
    )  # fmt: skip
    assert code == 0 and key["key"].startswith("fm-")
    assert (key["rpm_limit"], key["budget"]["daily_usd"], key["metadata"]) == (30, 2.5, {"owner": "ops"})
    code, listed, _ = run(capsys, "keys", "list", "--config", c, "--team-id", team["id"])
    assert [k["id"] for k in listed["data"]] == [key["id"]] and "key" not in listed["data"][0]
    code, updated, _ = run(
        capsys, "keys", "update", key["id"], "--config", c, "--blocked", "--tpm-limit", "99"
    )
    assert (updated["blocked"], updated["tpm_limit"], updated["rpm_limit"]) == (True, 99, 30)
    code, rotated, _ = run(capsys, "keys", "rotate", key["id"], "--config", c)
    assert rotated["id"] == key["id"] and rotated["key"] != key["key"]
    code, revoked, _ = run(capsys, "keys", "revoke", key["id"], "--config", c)
    assert revoked["revoked"] is True
    code, shown, _ = run(capsys, "keys", "show", key["id"], "--config", c)
    assert shown["revoked_at"] is not None


def test_roles_are_given_changed_and_removed(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    code, key, _ = run(capsys, "keys", "create", "--config", c, "--alias", "auditor", "--role", "viewer")
    assert code == 0 and key["role"] == "viewer"
    _, updated, _ = run(capsys, "keys", "update", key["id"], "--config", c, "--role", "admin")
    assert updated["role"] == "admin"
    _, updated, _ = run(capsys, "keys", "update", key["id"], "--config", c, "--alias", "x")
    assert updated["role"] == "admin"  # not named: kept
    _, updated, _ = run(capsys, "keys", "update", key["id"], "--config", c, "--no-role")
    assert updated["role"] is None
    with pytest.raises(SystemExit):
        main(["keys", "update", key["id"], "--config", c, "--role", "owner"])  # argparse refuses it


def test_every_change_is_in_the_audit_log_and_reads_are_not(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(config)
    _, key, _ = run(capsys, "keys", "create", "--config", c, "--alias", "cron")
    run(capsys, "keys", "show", key["id"], "--config", c)
    run(capsys, "keys", "list", "--config", c)
    run(capsys, "keys", "revoke", key["id"], "--config", c)
    assert run(capsys, "keys", "revoke", "no-such-key", "--config", c)[0] == 1
    _, team, _ = run(capsys, "teams", "create", "--config", c, "--alias", "ops")
    run(capsys, "teams", "delete", team["id"], "--config", c)

    with sqlite3.connect(tmp_path / "keys.db") as db:
        rows = db.execute(
            "SELECT action, actor_id, role, target, status FROM admin_audit ORDER BY seq"
        ).fetchall()
    assert [
        (action, actor, role, json.loads(target), status) for action, actor, role, target, status in rows
    ] == [
        ("CLI keys create", "cli", "admin", {}, 200),
        ("CLI keys revoke", "cli", "admin", {"key_id": key["id"]}, 200),
        ("CLI keys revoke", "cli", "admin", {"key_id": "no-such-key"}, 404),
        ("CLI teams create", "cli", "admin", {}, 200),
        ("CLI teams delete", "cli", "admin", {"team_id": team["id"]}, 200),
    ]


def test_audit_prune_deletes_only_records_older_than_the_days_kept(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(config)
    run(capsys, "keys", "create", "--config", c, "--alias", "recent")  # a record from now
    url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"

    async def backdate() -> None:
        engine = open_engine(url)
        try:
            for days in (400, 31):
                at = datetime.now(UTC) - timedelta(days=days)
                await AuditLog(engine).begin(AuditEntry(at=at, action=f"GET /old/{days}", status=200))
        finally:
            await engine.dispose()

    asyncio.run(backdate())
    code, pruned, _ = run(capsys, "audit", "prune", "--config", c, "--older-than-days", "30")
    assert code == 0 and pruned["deleted"] == 2
    with sqlite3.connect(tmp_path / "keys.db") as db:
        actions = [row[0] for row in db.execute("SELECT action FROM admin_audit ORDER BY seq")]
    assert actions == ["CLI keys create", "CLI audit prune"]  # the prune is itself recorded
    code, _, err = run(capsys, "audit", "prune", "--config", c, "--older-than-days", "0")
    assert code == 1 and "at least 1" in err


def test_team_lifecycle(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    _, team, _ = run(capsys, "teams", "create", "--config", c, "--alias", "a", "--monthly-budget-usd", "10")
    _, updated, _ = run(
        capsys, "teams", "update", team["id"], "--config", c, "--all-models", "--max-parallel", "3"
    )
    assert (updated["models"], updated["max_parallel"], updated["budget"]["monthly_usd"]) == (None, 3, 10.0)
    _, listed, _ = run(capsys, "teams", "list", "--config", c)
    assert team["id"] in [t["id"] for t in listed["data"]]
    assert run(capsys, "teams", "delete", team["id"], "--config", c)[0] == 0
    code, _, err = run(capsys, "teams", "show", team["id"], "--config", c)
    assert code == 1 and "No team" in err


def test_bad_options_name_the_field(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "create", "--config", str(config), "--rpm-limit", "0")
    assert code == 2 and "rpm_limit" in err
    code, _, err = run(capsys, "keys", "create", "--config", str(config), "--team-id", "nope")
    assert code == 1 and "team_id" in err


def test_db_upgrade_and_status(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "db", "status", "--config", str(config))
    assert code == 1 and "(empty)" in out
    code, out, _ = run(capsys, "db", "upgrade", "--config", str(config))
    assert code == 0 and head_revision() in out  # upgraded to the newest migration
    assert run(capsys, "db", "status", "--config", str(config))[0] == 0


def test_commands_need_a_database_that_outlives_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nodb.yaml"
    path.write_text('data_dir: ":memory:"\nmodels: []\n')
    code, _, err = run(capsys, "keys", "list", "--config", str(path))
    assert code == 2 and "database_url" in err


def test_commands_use_the_embedded_database_without_a_database_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "embedded.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nmodels: []\n")
    code, out, _ = run(capsys, "keys", "create", "--alias", "cli-embedded", "--config", str(path))
    assert code == 0, out
    code, listed, _ = run(capsys, "keys", "list", "--config", str(path))
    assert code == 0
    assert [key["alias"] for key in listed["data"]] == ["cli-embedded"]
    assert (tmp_path / "data" / "ferryman.db").is_file()


def test_keys_hash_prints_the_sha256_for_the_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("fm-some-secret\n"))
    code, out, _ = run(capsys, "keys", "hash")
    assert code == 0 and out.strip() == hashlib.sha256(b"fm-some-secret").hexdigest()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("ferryman")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.usefixtures("restore_logging")
def test_serve_refuses_a_schema_behind_when_auto_migrate_is_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "manual.yaml"
    path.write_text(
        yaml.safe_dump({"database_url": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", "auto_migrate": False})
    )
    code = main(["serve", "--config", str(path), "--port", "0"])
    assert code == 1
    assert f"ferryman db upgrade --config {path}" in capsys.readouterr().err


def test_cli_revocation_is_published_to_running_replicas(
    config: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "redis_url": redis_url}))
    _, key, _ = run(capsys, "keys", "create", "--config", str(config))
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("ferryman:keys:invalidate")
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        assert run(capsys, "keys", "revoke", key["id"], "--config", str(config))[0] == 0
        notice = pubsub.get_message(timeout=5)
        assert (
            notice is not None and notice["data"] == hashlib.sha256(key["key"].encode()).hexdigest().encode()
        )
    finally:
        pubsub.close()
        client.close()


def test_a_rotation_redis_cannot_announce_still_prints_the_new_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "with-redis.yaml"
    with throwaway_redis() as redis_url:
        path.write_text(f"data_dir: {tmp_path / 'data'}\nredis_url: {redis_url}\nmodels: []\n")
        code, created, _ = run(capsys, "keys", "create", "--alias", "to-rotate", "--config", str(path))
        assert code == 0
    # Redis is gone now: the rotation is saved, but no replica can be told.
    code, shown, err = run(capsys, "keys", "rotate", created["id"], "--config", str(path))
    assert code == 1
    assert "invalidation" in err or "replicas" in err
    assert shown["id"] == created["id"]
    assert shown["key"].startswith("fm-") and shown["key"] != created["key"]
