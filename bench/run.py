"""Run the overhead benchmark: nginx direct vs Ferryman vs LiteLLM in one run, written to RESULTS.md.

Usage (from the repository root): `.venv/bin/python bench/run.py [--skip-litellm] [--duration 10]`.
Every server it starts is stopped by its PID when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType

from _environment import describe_environment
from _measure import LoadPlan, TargetFailure, TargetResult, measure_target, median_result
from _report import RunReport, kept_notes, render_markdown
from _stages import measure_stage_costs
from _targets import (
    BENCH_DIR,
    DIRECT_NAME,
    FERRYMAN_NAME,
    LITELLM_NAME,
    LITELLM_VENV,
    REPO_DIR,
    Target,
    Upstream,
    direct_target,
    governance_variants,
    litellm_available,
    start_ferryman,
    start_litellm,
    start_nginx,
    start_redis,
    wait_until_serving,
)

Outcome = TargetResult | TargetFailure


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The knobs of a run; the defaults are the ones RESULTS.md is written with."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--concurrency", type=int, default=50, help="connections of the loaded runs")
    parser.add_argument("--ttfb-requests", type=int, default=200, help="sequential streaming requests")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target and body")
    parser.add_argument("--workers", type=int, default=1, help="Ferryman worker processes (default 1)")
    parser.add_argument(
        "--governance-rounds",
        type=int,
        default=3,
        help="rounds of the governance variants, interleaved; each figure is their median (default 3)",
    )
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="configure a random master key in both gateways and send it as Bearer (default: on)",
    )
    parser.add_argument("--skip-litellm", action="store_true", help="measure nginx and Ferryman only")
    parser.add_argument(
        "--governance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure Ferryman on Redis alone, with rate limits, and with budgets (default: on)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure Ferryman at git revision REV (a temporary worktree, same venv), just before "
        "the working tree's: the before/after comparison a change to the hot path must report",
    )
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV, help="venv with litellm[proxy]")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md", help="Markdown report path")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and configs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every target, write the report, and exit non-zero if any target could not be measured."""
    args = parse_args(argv)
    # A SIGTERM must unwind through the `finally` blocks that stop our servers.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    plan = LoadPlan(
        args.duration,
        args.concurrency,
        args.ttfb_requests,
        args.warmup,
        governance_rounds=max(1, args.governance_rounds),
    )
    master_key = f"sk-bench-{secrets.token_hex(24)}" if args.auth else None
    started, load_at_start = datetime.now(UTC), os.getloadavg()
    run_dir = Path(tempfile.mkdtemp(prefix="ferryman-bench-"))
    outcomes = measure_all(run_dir, plan, master_key, args)
    print("-- pipeline stages: measuring in-process", file=sys.stderr, flush=True)
    stage_costs = measure_stage_costs()
    report = RunReport(
        started,
        describe_environment(load_at_start, args.litellm_venv),
        plan,
        args.auth,
        outcomes,
        stage_costs,
        baseline_name(args.baseline) if args.baseline else None,
    )
    previous = args.output.read_text() if args.output.exists() else ""
    text = render_markdown(report, kept_notes(previous))
    args.output.write_text(text)
    print(text)
    failed = any(isinstance(outcome, TargetFailure) for outcome in outcomes)
    if args.keep_logs or failed:
        print(f"servers' logs and configs kept in {run_dir}", file=sys.stderr)
    else:
        shutil.rmtree(run_dir)
    return 1 if failed else 0


def measure_all(
    run_dir: Path, plan: LoadPlan, master_key: str | None, args: argparse.Namespace
) -> tuple[Outcome, ...]:
    """Start nginx, then measure direct, Ferryman and LiteLLM one after another, each alone on the box."""
    upstream = start_nginx(run_dir)
    try:
        outcomes = [_measure(partial(direct_target, upstream), plan, owns_process=False, name=DIRECT_NAME)]
        if args.baseline:
            outcomes.append(_measure_baseline(run_dir, upstream, plan, master_key, args))
        outcomes.append(
            _measure(
                partial(start_ferryman, run_dir, upstream, master_key, args.workers),
                plan,
                owns_process=True,
                name=FERRYMAN_NAME,
            )
        )
        if args.governance:
            outcomes += _measure_governance(run_dir, upstream, plan, master_key, args.workers)
        if not args.skip_litellm:
            outcomes.append(_measure_litellm(run_dir, upstream, plan, master_key, args.litellm_venv))
    finally:
        upstream.process.stop()
    return tuple(outcomes)


def baseline_name(revision: str) -> str:
    """The report column of the baseline: Ferryman at the short commit `revision` names."""
    short = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=REPO_DIR, capture_output=True, text=True, check=True
    ).stdout.strip()
    return f"Ferryman @ {short}"


def _measure_baseline(
    run_dir: Path, upstream: Upstream, plan: LoadPlan, master_key: str | None, args: argparse.Namespace
) -> Outcome:
    """Check out `args.baseline` in a temporary worktree, measure it, and remove the worktree."""
    checkout = run_dir / "baseline"
    git = ["git", "-C", str(REPO_DIR)]
    subprocess.run([*git, "worktree", "add", "--detach", str(checkout), args.baseline], check=True)
    try:
        starter = partial(
            start_ferryman,
            run_dir,
            upstream,
            master_key,
            args.workers,
            checkout,
            baseline_name(args.baseline),
        )
        return _measure(starter, plan, owns_process=True, name=baseline_name(args.baseline))
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(checkout)], check=True)


def _measure_governance(
    run_dir: Path, upstream: Upstream, plan: LoadPlan, master_key: str | None, workers: int
) -> list[Outcome]:
    """Ferryman with its state in a private Redis, then with limits, budgets and cache hits on top,
    in `plan.governance_rounds` interleaved rounds (A B C D, A B C D, ...), each variant started afresh
    in each round: a drift of the machine over the minutes of a round touches every variant alike, and
    each figure reported is the variant's median (`median_result`). A variant that fails in any round
    is reported as failed."""
    redis, redis_url = start_redis(run_dir)
    variants = governance_variants(redis_url)
    rounds: dict[str, list[Outcome]] = {name: [] for name, _ in variants}
    try:
        for round_number in range(plan.governance_rounds):
            for name, extra in variants:
                if any(isinstance(outcome, TargetFailure) for outcome in rounds[name]):
                    continue
                starter = partial(start_ferryman, run_dir, upstream, master_key, workers, None, name, extra)
                label = f"{name}, round {round_number + 1} of {plan.governance_rounds}"
                rounds[name].append(_measure(starter, plan, owns_process=True, name=label))
    finally:
        redis.stop()
    return [_combined(outcomes) for outcomes in rounds.values()]


def _combined(outcomes: Sequence[Outcome]) -> Outcome:
    """A variant's rounds as one outcome: its first failure, or the median of its results."""
    failures = [outcome for outcome in outcomes if isinstance(outcome, TargetFailure)]
    if failures:
        return failures[0]
    return median_result([outcome for outcome in outcomes if isinstance(outcome, TargetResult)])


def _measure_litellm(
    run_dir: Path, upstream: Upstream, plan: LoadPlan, master_key: str | None, venv: Path
) -> Outcome:
    if not litellm_available(venv):
        reason = f"no LiteLLM venv at {venv}; create it (README.md) or pass --skip-litellm"
        return TargetFailure(LITELLM_NAME, reason)
    starter = partial(start_litellm, run_dir, upstream, master_key, venv)
    return _measure(starter, plan, owns_process=True, name=LITELLM_NAME)


def _measure(start: Callable[[], Target], plan: LoadPlan, owns_process: bool, name: str) -> Outcome:
    """Start a target, measure it, and stop it if we started it, whatever happened in between."""
    print(f"-- {name}: starting", file=sys.stderr, flush=True)
    target = start()
    try:
        return _wait_and_measure(target, plan)
    finally:
        if owns_process:
            target.process.stop()


def _wait_and_measure(target: Target, plan: LoadPlan) -> Outcome:
    """Measure a started target; a server that never serves or breaks under load becomes a report row."""
    try:
        wait_until_serving(target)  # its errors already carry the server's log
    except RuntimeError as exc:
        return TargetFailure(target.name, str(exc))
    print(f"-- {target.name}: measuring", file=sys.stderr, flush=True)
    try:
        return measure_target(target, plan)
    except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        return TargetFailure(
            target.name, f"{exc}\n--- last lines of its log ---\n{target.process.log_tail()}"
        )


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
