"""Measure one running target: warm it, load it in phases, charge it the CPU and memory it used."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from _load import Endpoint, LoadResult, TtfbResult, measure_ttfb, run_wrk
from _procs import read_tree_usage
from _targets import Target

_MS_PER_S = 1000.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How hard and how long each target is loaded; the same plan for every target in a run."""

    duration_s: float = 10.0
    concurrency: int = 50
    ttfb_requests: int = 200
    warmup_s: float = 2.0
    wrk_threads: int = 1
    governance_rounds: int = 3  # each governance variant measured this often, interleaved; medians kept


@dataclass(frozen=True, slots=True)
class Phase:
    """One wrk run and the CPU time the target's process tree spent during it."""

    load: LoadResult
    cpu_seconds: float

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU per completed request: the cost that decides how many cores a gateway needs."""
        return self.cpu_seconds * _MS_PER_S / self.load.requests if self.load.requests else float("nan")


@dataclass(frozen=True, slots=True)
class TargetResult:
    """Everything measured for one target in one run."""

    name: str
    serial: Phase
    concurrent: Phase
    stream_concurrent: Phase
    ttfb: TtfbResult
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class TargetFailure:
    """A target that could not be measured, and why; the report shows it instead of figures."""

    name: str
    reason: str


def measure_target(target: Target, plan: LoadPlan) -> TargetResult:
    """Warm `target` up, then run the c=1, c=N, streaming c=N and TTFB phases in that order."""
    run_wrk(target.chat, min(10, plan.concurrency), plan.warmup_s, plan.wrk_threads)
    run_wrk(target.stream, min(10, plan.concurrency), plan.warmup_s, plan.wrk_threads)
    serial = _run_phase(target, target.chat, 1, plan)
    concurrent = _run_phase(target, target.chat, plan.concurrency, plan)
    stream_concurrent = _run_phase(target, target.stream, plan.concurrency, plan)
    ttfb = asyncio.run(measure_ttfb(target.stream, plan.ttfb_requests))
    return TargetResult(
        name=target.name,
        serial=serial,
        concurrent=concurrent,
        stream_concurrent=stream_concurrent,
        ttfb=ttfb,
        rss_bytes=read_tree_usage(target.process.pid).rss_bytes,
    )


def _run_phase(target: Target, endpoint: Endpoint, connections: int, plan: LoadPlan) -> Phase:
    before = read_tree_usage(target.process.pid)
    load = run_wrk(endpoint, connections, plan.duration_s, plan.wrk_threads)
    after = read_tree_usage(target.process.pid)
    return Phase(load=load, cpu_seconds=after.cpu_seconds - before.cpu_seconds)


def median_result(results: Sequence[TargetResult]) -> TargetResult:
    """One target measured in several rounds, as one result: each phase's middle run by the figure it
    is read for (c=1: p50 latency; loaded: CPU per request; TTFB: its p50), the largest RSS.

    The governance goals are differences of a tenth of a millisecond between targets measured a few
    minutes apart, and this machine's figures drift by more than that in a minute; a round disturbed
    by a neighbour's burst or flattered by a quiet spell sits at an end of the order, not the middle.
    """
    if not results:
        raise ValueError("median_result needs at least one result")
    return TargetResult(
        name=results[0].name,
        serial=_middle([r.serial for r in results], lambda p: p.load.p50_ms),
        concurrent=_middle([r.concurrent for r in results], lambda p: p.cpu_ms_per_request),
        stream_concurrent=_middle([r.stream_concurrent for r in results], lambda p: p.cpu_ms_per_request),
        ttfb=_middle([r.ttfb for r in results], lambda t: t.p50_ms),
        rss_bytes=max(r.rss_bytes for r in results),
    )


def _middle(items: Sequence[_T], key: Callable[[_T], float]) -> _T:
    """The median item by `key` (the upper middle of an even count: always one that was measured)."""
    return sorted(items, key=key)[len(items) // 2]
