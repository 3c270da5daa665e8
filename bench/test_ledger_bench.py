"""The spend-ledger benchmark end to end on 5,000 rows, one write batch (a smoke
run of seconds; the full million rows is `make bench-ledger`): load, a real gateway, the report.

It needs the PostgreSQL `make bench-ledger` uses (`DATABASE_URL`, else the local server on 5432; CI and
`scripts/install-test-services.sh` provide one): a missing server fails the test, it is never skipped.
"""

from __future__ import annotations

from pathlib import Path

from ledger import TARGET_MS, Timings, default_admin_url, main


def test_the_benchmark_loads_a_month_and_times_the_report(tmp_path: Path) -> None:
    output = tmp_path / "LEDGER.md"
    argv = ["--rows", "5000", "--calls", "3", "--admin-url", default_admin_url(), "--output", str(output)]
    code = main(argv)
    report = output.read_text()
    assert "| ledger rows (one month, October 2026) | 5,000 |" in report
    assert "`GET /admin/spend?group_by=key,day` over HTTP" in report
    assert code == (0 if "**met**" in report else 1)  # the exit status follows the target
    assert f"under {TARGET_MS:.0f} ms" in report


def test_percentiles_are_nearest_rank() -> None:
    timings = Timings([float(n) for n in range(1, 21)])
    assert (timings.percentile(0.5), timings.percentile(0.95), timings.percentile(1.0)) == (10.0, 19.0, 20.0)
