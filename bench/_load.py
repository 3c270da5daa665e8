"""Drive load at one endpoint: wrk for throughput and latency, an aiohttp client for streaming TTFB."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

WRK_SCRIPT = Path(__file__).with_name("post.lua")
_RESULT_PREFIX = "BENCH_RESULT "
_US_PER_MS = 1000.0
_NS_PER_MS = 1_000_000.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One URL and request body; the same body shape goes to nginx, Ferryman and LiteLLM alike."""

    url: str
    body: bytes
    api_key: str | None = None

    def headers(self) -> dict[str, str]:
        """The headers a client SDK would send: JSON body, and the key as a Bearer token if auth is on."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one wrk run measured: completed requests, failures and the latency distribution."""

    requests: int
    duration_s: float
    errors: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def requests_per_s(self) -> float:
        """Completed requests per second of wall time."""
        return self.requests / self.duration_s if self.duration_s else 0.0


@dataclass(frozen=True, slots=True)
class TtfbResult:
    """Time to first body byte of sequential streaming requests, in milliseconds."""

    samples_ms: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        """The median: the figure the streaming target is stated in."""
        return percentile(self.samples_ms, 50)

    @property
    def p99_ms(self) -> float:
        """The tail, to show whether the median hides stalls."""
        return percentile(self.samples_ms, 99)


def percentile(samples: tuple[float, ...] | list[float], q: float) -> float:
    """Nearest-rank percentile: always one of the samples, with no interpolation to explain."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def run_wrk(endpoint: Endpoint, connections: int, duration_s: float, threads: int = 1) -> LoadResult:
    """Run wrk with `connections` keep-alive connections for `duration_s` seconds against `endpoint`."""
    argv = [
        "wrk",
        f"--threads={min(threads, connections)}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration_s))}s",
        "--timeout=10s",
        f"--script={WRK_SCRIPT}",
        endpoint.url,
    ]
    env = dict(os.environ, BENCH_BODY=endpoint.body.decode(), BENCH_API_KEY=endpoint.api_key or "")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk_output(done.stdout)


def parse_wrk_output(stdout: str) -> LoadResult:
    """Read the JSON line post.lua's done() hook prints; wrk's own text report is ignored."""
    for line in stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            raw = json.loads(line[len(_RESULT_PREFIX) :])
            latency = raw["latency_us"]
            return LoadResult(
                requests=int(raw["requests"]),
                duration_s=raw["duration_us"] / 1e6,
                errors=sum(int(count) for count in raw["errors"].values()),
                mean_ms=latency["mean"] / _US_PER_MS,
                p50_ms=latency["p50"] / _US_PER_MS,
                p90_ms=latency["p90"] / _US_PER_MS,
                p99_ms=latency["p99"] / _US_PER_MS,
            )
    raise ValueError(f"no {_RESULT_PREFIX.strip()} line in wrk output:\n{stdout}")


async def measure_ttfb(endpoint: Endpoint, count: int, warmup: int = 20) -> TtfbResult:
    """Send `warmup` + `count` sequential streaming requests on one kept-alive connection.

    Each sample runs from just before the request is written to the first body bytes read, so it
    holds everything a gateway adds before a streaming client sees its first token.
    """
    samples: list[float] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for index in range(warmup + count):
            elapsed_ms = await _time_first_byte(session, endpoint)
            if index >= warmup:
                samples.append(elapsed_ms)
    return TtfbResult(samples_ms=tuple(samples))


async def _time_first_byte(session: aiohttp.ClientSession, endpoint: Endpoint) -> float:
    started = time.perf_counter_ns()
    async with session.post(endpoint.url, data=endpoint.body, headers=endpoint.headers()) as response:
        first = await response.content.readany()
        elapsed_ms = (time.perf_counter_ns() - started) / _NS_PER_MS
        rest = await response.content.read()
    if response.status != 200 or not first:
        raise RuntimeError(f"{endpoint.url} answered {response.status}: {(first + rest)[:300]!r}")
    return elapsed_ms


async def check_answer(endpoint: Endpoint, streaming: bool) -> str | None:
    """Send one request and return why its answer is wrong, or None when it is a valid completion.

    Benchmarking an endpoint that answers errors fast would flatter it, so every target must first
    return the fixture's completion (with usage) and, when streaming, end with `data: [DONE]`.
    """
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(endpoint.url, data=endpoint.body, headers=endpoint.headers()) as response,
        ):
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status != 200:
        return f"HTTP {response.status}: {body[:300]!r}"
    return _stream_problem(body) if streaming else _completion_problem(body)


def _completion_problem(body: bytes) -> str | None:
    try:
        completion = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:300]!r}"
    if not completion.get("choices") or not completion.get("usage"):
        return f"no choices or usage: {body[:300]!r}"
    return None


def _stream_problem(body: bytes) -> str | None:
    if b'"usage":{' not in body.replace(b'"usage": {', b'"usage":{'):
        return f"stream without a usage chunk: {body[-300:]!r}"
    if not body.rstrip().endswith(b"data: [DONE]"):
        return f"stream does not end with data: [DONE]: {body[-300:]!r}"
    return None
