"""Tests of the benchmark's own machinery: parsing, /proc accounting, process control, nginx and report."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import run
import yaml
from _load import (
    Endpoint,
    LoadResult,
    TtfbResult,
    _completion_problem,
    _stream_problem,
    check_answer,
    parse_wrk_output,
    percentile,
    run_wrk,
)
from _measure import LoadPlan, Phase, TargetFailure, TargetResult, median_result
from _procs import read_tree_usage, start_process
from _report import NOTES_MARKER, RunReport, kept_notes, render_markdown
from _stages import ROUTING_STRATEGIES, StageCost, measure_stage_costs
from _targets import (
    BUDGETS_NAME,
    CACHE_NAME,
    DIRECT_NAME,
    FERRYMAN_NAME,
    LIMITS_NAME,
    LITELLM_NAME,
    REDIS_NAME,
    Upstream,
    ferryman_config,
    litellm_config,
    render_nginx_config,
    request_body,
    start_nginx,
)


@pytest.fixture
def nginx_installed() -> None:
    """nginx must be there (install-test-services.sh installs it): a missing tool fails, never skips."""
    assert shutil.which("nginx"), "nginx is missing: run scripts/install-test-services.sh"


@pytest.fixture
def wrk_installed() -> None:
    """wrk must be there too, for the same reason."""
    assert shutil.which("wrk"), "wrk is missing: run scripts/install-test-services.sh"


needs_nginx = pytest.mark.usefixtures("nginx_installed")
needs_wrk = pytest.mark.usefixtures("wrk_installed")

WRK_STDOUT = """Running 1s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 1 connections
BENCH_RESULT {"requests": 500, "duration_us": 2000000, "bytes": 1, "errors": {"connect": 1, "read": 2, \
"write": 0, "status": 3, "timeout": 0}, "latency_us": {"mean": 1500.0, "p50": 1200, "p90": 2000, \
"p99": 4000, "max": 9000}}
"""


def test_parse_wrk_output_reads_the_scripts_json_line() -> None:
    result = parse_wrk_output(WRK_STDOUT)

    assert result.requests == 500
    assert result.requests_per_s == 250.0
    assert result.errors == 6
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == (1.2, 2.0, 4.0)


def test_parse_wrk_output_refuses_output_without_the_json_line() -> None:
    with pytest.raises(ValueError, match="BENCH_RESULT"):
        parse_wrk_output("Running 1s test\n  Requests/sec: 10\n")


def test_percentile_is_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]

    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_read_tree_usage_counts_a_childs_memory() -> None:
    alone = read_tree_usage(os.getpid()).rss_bytes
    script = "b = bytearray(64 * 1024 * 1024); import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        time.sleep(1.5)
        with_child = read_tree_usage(os.getpid()).rss_bytes
    finally:
        child.kill()
        child.wait()

    assert with_child - alone >= 60 * 1024 * 1024


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    process = start_process("sleeper", ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path)
    try:
        deadline = time.monotonic() + 5
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        process.stop()
    finally:
        pid_file.unlink(missing_ok=True)

    assert process.has_exited()
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in _proc_state(grandchild)


def _proc_state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


@needs_nginx
def test_rendered_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    config = tmp_path / "nginx.conf"
    config.write_text(render_nginx_config(tmp_path, 18080))

    done = subprocess.run(
        ["nginx", "-t", "-c", str(config), "-p", str(tmp_path)], capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr


@needs_nginx
@needs_wrk
def test_nginx_serves_both_fixtures_to_posts_under_wrk(tmp_path: Path) -> None:
    upstream = start_nginx(tmp_path)
    try:
        chat = Endpoint(f"{upstream.chat_base}/chat/completions", request_body("m", False))
        stream = Endpoint(f"{upstream.stream_base}/chat/completions", request_body("m", True))
        chat_problem = asyncio.run(check_answer(chat, streaming=False))
        stream_problem = asyncio.run(check_answer(stream, streaming=True))
        load = run_wrk(chat, connections=2, duration_s=1)
    finally:
        upstream.process.stop()

    assert (chat_problem, stream_problem) == (None, None)
    assert load.requests > 100
    assert load.errors == 0


async def test_check_answer_reports_an_unreachable_server() -> None:
    problem = await check_answer(Endpoint("http://127.0.0.1:9/v1/chat/completions", b"{}"), streaming=True)

    assert problem is not None
    assert problem.startswith("ClientConnectorError")


def test_stream_checks_demand_a_usage_chunk_and_done() -> None:
    usage = b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n'
    done = b"data: [DONE]\n\n"

    assert _stream_problem(usage + done) is None
    assert "usage" in (_stream_problem(b'data: {"choices":[]}\n\n' + done) or "")
    assert "[DONE]" in (_stream_problem(usage) or "")


def test_completion_check_demands_usage() -> None:
    assert _completion_problem(b'{"choices":[{}],"usage":{"total_tokens":3}}') is None
    assert "usage" in (_completion_problem(b'{"choices":[{}]}') or "")


def test_gateway_configs_point_both_models_at_the_upstream() -> None:
    upstream = Upstream(process=None, port=4321)  # type: ignore[arg-type]

    ferryman = yaml.safe_load(ferryman_config(upstream, master_key=None))
    litellm = yaml.safe_load(litellm_config(upstream, master_key="sk-x"))

    bases = {m["name"]: m["deployments"][0]["api_base"] for m in ferryman["models"]}
    assert bases == {
        "bench-model": "http://127.0.0.1:4321/v1",
        "bench-stream": "http://127.0.0.1:4321/stream/v1",
    }
    assert "master_key" not in ferryman
    assert litellm["general_settings"] == {"master_key": "sk-x"}
    assert [m["litellm_params"]["model"] for m in litellm["model_list"]] == ["openai/bench-model"] * 2


def test_report_states_each_goal_and_by_how_much_it_was_missed() -> None:
    report = RunReport(
        started=datetime(2026, 1, 2, tzinfo=UTC),
        environment=(("CPU", "2 x test"),),
        plan=LoadPlan(),
        auth=False,
        outcomes=(
            _result(DIRECT_NAME, rps=20000, p50=0.2, ttfb=0.4),
            _result(FERRYMAN_NAME, rps=400, p50=2.2, ttfb=1.4),
            _result(LITELLM_NAME, rps=100, p50=12.0, ttfb=20.0),
        ),
    )

    text = render_markdown(report)

    assert "| requests/s at c=50, Ferryman ÷ LiteLLM | ≥ 5x | 4.00x | **missed**: 1.25x short |" in text
    assert "| p50 overhead at c=1 | ≤ 1.5 ms | 2.00 ms | **missed** by 0.50 ms |" in text
    assert "| streaming TTFB overhead (p50) | ≤ 2 ms | 1.00 ms | met |" in text
    assert "Gateway auth: off" in text
    assert "Ferryman ÷ 110 (the issue's LiteLLM figure) | ≥ 5x | 3.64x | **missed**: 1.38x short |" in text


def test_report_keeps_the_hand_written_notes_of_the_previous_file() -> None:
    report = RunReport(datetime(2026, 1, 2, tzinfo=UTC), (), LoadPlan(), True, ())
    previous = render_markdown(report, kept_notes="## Notes\n\nProfile: hot spot X.\n")

    again = render_markdown(report, kept_notes(previous))

    assert again.endswith(f"{NOTES_MARKER}\n## Notes\n\nProfile: hot spot X.\n")
    assert again.count(NOTES_MARKER) == 1
    assert kept_notes("# Results without notes\n") == ""


def test_report_lists_a_target_that_could_not_be_measured() -> None:
    report = RunReport(
        started=datetime(2026, 1, 2, tzinfo=UTC),
        environment=(),
        plan=LoadPlan(),
        auth=True,
        outcomes=(TargetFailure(FERRYMAN_NAME, "exited during startup"),),
    )

    text = render_markdown(report)

    assert "## Not measured" in text
    assert "exited during startup" in text
    assert "## Goals" not in text


def _result(name: str, rps: float, p50: float, ttfb: float) -> TargetResult:
    load = LoadResult(
        requests=int(rps * 10), duration_s=10.0, errors=0, mean_ms=p50, p50_ms=p50, p90_ms=p50, p99_ms=p50
    )
    phase = Phase(load=load, cpu_seconds=1.0)
    return TargetResult(
        name=name,
        serial=phase,
        concurrent=phase,
        stream_concurrent=phase,
        ttfb=TtfbResult(samples_ms=(ttfb,)),
        rss_bytes=50 * 1024**2,
    )


def test_report_compares_against_the_baseline_and_states_each_stage_cost() -> None:
    report = RunReport(
        started=datetime(2026, 1, 2, tzinfo=UTC),
        environment=(),
        plan=LoadPlan(),
        auth=True,
        outcomes=(
            _result("Ferryman @ abc1234", rps=1000, p50=1.0, ttfb=1.0),
            _result(FERRYMAN_NAME, rps=800, p50=1.0, ttfb=1.0),
        ),
        stage_costs=(
            StageCost("pipeline and attempt loop, no stages", 20.0),
            StageCost("model_access", 0.25),
        ),
        baseline="Ferryman @ abc1234",
    )

    text = render_markdown(report)

    assert "## Against the baseline (Ferryman @ abc1234)" in text
    # 1 s of CPU over 10,000 vs 8,000 requests: 0.100 ms → 0.125 ms per request, +25 %.
    assert "| CPU per request, c=50 (ms) | 0.100 | 0.125 | +0.025 (+25.0%) |" in text
    assert "| requests/s, c=50 | 1,000 | 800 | -200 (-20.0%) |" in text
    assert "| model_access | 0.25 |" in text


def test_stage_costs_are_measured_for_every_stage_of_the_app() -> None:
    costs = measure_stage_costs(requests=200, rounds=1)

    assert [cost.name for cost in costs] == [
        "pipeline and attempt loop, no stages",
        "model_access",
        "input_caps",
        "rate_limits",
        "budgets",
        "ledger",
        *(f"routing: {strategy} + breaker" for strategy in ROUTING_STRATEGIES),
    ]
    assert costs[0].microseconds > 0
    assert all(cost.microseconds >= 0 for cost in costs)


def test_report_states_what_limits_and_budgets_add_against_redis_alone() -> None:
    report = RunReport(
        started=datetime(2026, 1, 2, tzinfo=UTC),
        environment=(),
        plan=LoadPlan(),
        auth=True,
        outcomes=(
            _result(REDIS_NAME, rps=1000, p50=1.0, ttfb=1.0),
            _result(LIMITS_NAME, rps=800, p50=1.2, ttfb=1.0),  # 1 s CPU over fewer requests: +0.025 ms
            _result(BUDGETS_NAME, rps=500, p50=1.1, ttfb=1.0),  # +0.100 ms
            _result(CACHE_NAME, rps=2500, p50=0.5, ttfb=1.0),  # 0.04 ms in all
        ),
    )

    text = render_markdown(report)

    assert "## Governance on vs off (against Ferryman (Redis), same run)" in text
    assert "| limits: added CPU per request | ≤ 0.1 ms | 0.02 ms | met |" in text
    assert "| limits: added p50 latency at c=1 | ≤ 0.5 ms | 0.20 ms | met |" in text
    assert "| budgets: added CPU per request | ≤ 0.15 ms | 0.10 ms | met |" in text
    assert "| cache hit: CPU per request | ≤ 0.3 ms | 0.04 ms | met |" in text


def test_the_median_result_keeps_each_phases_middle_round() -> None:
    rounds = [
        _result(LIMITS_NAME, rps=1000, p50=1.5, ttfb=3.0),  # CPU per request 0.100 ms
        _result(LIMITS_NAME, rps=500, p50=0.9, ttfb=1.0),  # 0.200 ms
        _result(LIMITS_NAME, rps=2000, p50=1.1, ttfb=2.0),  # 0.050 ms
    ]

    median = median_result(rounds)

    assert median.name == LIMITS_NAME
    assert median.concurrent.cpu_ms_per_request == pytest.approx(0.1)
    assert median.stream_concurrent.cpu_ms_per_request == pytest.approx(0.1)
    assert median.serial.load.p50_ms == 1.1
    assert median.ttfb.p50_ms == 2.0


def test_a_variant_failing_in_any_round_is_reported_as_failed() -> None:
    failure = TargetFailure(LIMITS_NAME, "it crashed")
    measured = _result(LIMITS_NAME, rps=1000, p50=1.0, ttfb=1.0)

    assert run._combined([measured, failure]) == failure
    assert run._combined([measured]) == median_result([measured])
