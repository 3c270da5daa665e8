"""The servers under test: nginx (the fixed upstream and the direct baseline), Ferryman and LiteLLM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from _load import Endpoint, check_answer
from _procs import ManagedProcess, free_port, start_process

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
FIXTURES_DIR = BENCH_DIR / "fixtures"
NGINX_TEMPLATE = BENCH_DIR / "nginx.conf.template"
FERRYMAN_BIN = REPO_DIR / ".venv" / "bin" / "ferryman"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"

DIRECT_NAME = "direct (nginx)"
FERRYMAN_NAME = "Ferryman"
LITELLM_NAME = "LiteLLM"
CHAT_MODEL = "bench-model"
STREAM_MODEL = "bench-stream"
# USD per million input and output tokens, given to both gateways so both do their cost accounting.
BENCH_PRICE_PER_MTOK = (0.15, 0.60)
# Environment that would make LiteLLM reach for a database, a cache or the network.
_LITELLM_UNSET = ("DATABASE_URL", "DIRECT_URL", "DATABASE_HOST", "REDIS_URL", "REDIS_HOST", "REDIS_PORT")


@dataclass(frozen=True, slots=True)
class Target:
    """One column of the report: the server whose CPU and memory are charged, and where to send load."""

    name: str
    process: ManagedProcess
    chat: Endpoint
    stream: Endpoint
    startup_s: float = 15.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """The running nginx and the base URLs the gateways are configured with."""

    process: ManagedProcess
    port: int

    @property
    def chat_base(self) -> str:
        """The OpenAI `api_base` answering with the fixed chat.completion JSON."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def stream_base(self) -> str:
        """The OpenAI `api_base` answering with the fixed SSE stream, whatever the body asks."""
        return f"http://127.0.0.1:{self.port}/stream/v1"


def request_body(model: str, streaming: bool) -> bytes:
    """A small chat request, as an OpenAI SDK would send it (streams ask for the usage chunk)."""
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    if streaming:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body, separators=(",", ":")).encode()


def render_nginx_config(run_dir: Path, port: int) -> str:
    """Fill nginx.conf.template for a private nginx whose pid file, logs and temp files live in `run_dir`."""
    # As root, nginx's workers drop to `nobody`, which can read the fixtures but not a 0700 temp dir.
    user_line = "user nobody nogroup;" if os.geteuid() == 0 else ""
    return (
        NGINX_TEMPLATE.read_text()
        .replace("@RUN_DIR@", str(run_dir))
        .replace("@PORT@", str(port))
        .replace("@FIXTURES@", str(FIXTURES_DIR))
        .replace("@USER_LINE@", user_line)
    )


def start_nginx(run_dir: Path) -> Upstream:
    """Start nginx in the foreground (`daemon off`) on a free loopback port."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    run_dir.chmod(0o755)
    config_path = run_dir / "nginx.conf"
    config_path.write_text(render_nginx_config(run_dir, port))
    process = start_process("nginx", [nginx, "-c", str(config_path), "-p", str(run_dir)], run_dir)
    upstream = Upstream(process=process, port=port)
    try:
        wait_until_ready(process, Endpoint(f"{upstream.chat_base}/chat/completions", b"{}"), 15)
    except BaseException:
        process.stop()
        raise
    return upstream


def direct_target(upstream: Upstream) -> Target:
    """The baseline: load goes straight to nginx, the work every gateway has to add to."""
    return Target(
        name=DIRECT_NAME,
        process=upstream.process,
        chat=Endpoint(f"{upstream.chat_base}/chat/completions", request_body(CHAT_MODEL, False)),
        stream=Endpoint(f"{upstream.stream_base}/chat/completions", request_body(CHAT_MODEL, True)),
    )


def ferryman_config(
    upstream: Upstream,
    master_key: str | None,
    data_dir: Path | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """The gateway's YAML config: two models on the same nginx, one for each fixture; `data_dir` keeps
    the embedded database in the run's temp dir (None for a baseline release that has no such key);
    `extra` adds top-level sections (Redis, limits, budgets) for the governance variants."""
    config: dict[str, object] = {
        # No drain delay on SIGTERM: nothing is in flight when the benchmark stops the gateway.
        "server": {"shutdown_delay_seconds": 0},
        "models": [
            _ferryman_model(CHAT_MODEL, upstream.chat_base),
            _ferryman_model(STREAM_MODEL, upstream.stream_base),
        ],
    }
    if data_dir is not None:
        config = {"data_dir": str(data_dir), **config}
    config |= extra or {}
    if master_key:
        config = {"master_key": master_key, **config}
    return yaml.safe_dump(config, sort_keys=False)


def _ferryman_model(name: str, api_base: str) -> dict[str, object]:
    deployment = {
        "provider": "openai-compatible",
        "model": CHAT_MODEL,
        "api_base": api_base,
        "api_key": "dummy",
        # Priced, so cost accounting runs as in production and no "unpriced" warning is logged.
        "price": {"input_per_mtok": BENCH_PRICE_PER_MTOK[0], "output_per_mtok": BENCH_PRICE_PER_MTOK[1]},
    }
    return {"name": name, "deployments": [deployment]}


def start_ferryman(
    run_dir: Path,
    upstream: Upstream,
    master_key: str | None,
    workers: int,
    baseline: Path | None = None,
    name: str = FERRYMAN_NAME,
    extra: dict[str, object] | None = None,
) -> Target:
    """Start `ferryman serve` on a free port in front of nginx; `wait_until_serving` tells when it is up.

    With `baseline` (a checkout of an older commit), that checkout's `src/` is served instead, with the
    same virtualenv: a before/after comparison in one run, on the same machine state.
    """
    slug = "ferryman-baseline" if baseline is not None else _slug(name)
    config_path = run_dir / f"{slug}.yaml"
    data_dir = None if baseline is not None else run_dir / f"data-{slug}"
    config_path.write_text(ferryman_config(upstream, master_key, data_dir, extra))
    port = free_port()
    env: dict[str, str] | None = None
    command = [str(FERRYMAN_BIN)]
    if baseline is not None:
        env = {**os.environ, "PYTHONPATH": str(baseline / "src")}
        command = [
            str(FERRYMAN_BIN.parent / "python"),
            "-c",
            "import sys; from ferryman.cli import main; sys.exit(main())",
        ]
    argv = [
        *command,
        "serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if workers != 1:
        argv += ["--workers", str(workers)]
    process = start_process(slug, argv, run_dir, env)
    return _gateway_target(name, process, port, master_key, startup_s=60)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# The governance variants: the same gateway with its state in Redis, then with limits or budgets that
# every request passes through (never reached, so every request is served and timed alike).
REDIS_NAME = "Ferryman (Redis)"
LIMITS_NAME = "Ferryman (Redis) + limits"
BUDGETS_NAME = "Ferryman (Redis) + budgets"
CACHE_NAME = "Ferryman (Redis) + cache hits"
_NEVER_REACHED = {"rpm": 10**9, "tpm": 10**12, "max_parallel": 10**6}


def governance_variants(redis_url: str) -> list[tuple[str, dict[str, object]]]:
    """(name, extra config) of each variant, baseline first."""
    base: dict[str, object] = {"redis_url": redis_url}
    return [
        (REDIS_NAME, base),
        (LIMITS_NAME, {**base, "limits": {"global": _NEVER_REACHED}}),
        (BUDGETS_NAME, {**base, "budgets": {"global": {"daily_usd": 10.0**9, "monthly_usd": 10.0**9}}}),
        # The bench's request sets no temperature, so the cache is told to keep sampled answers too:
        # after the first request every one is a hit, served from Redis without the upstream.
        (
            CACHE_NAME,
            {**base, "cache": {"enabled": True, "backend": "redis", "cache_nonzero_temperature": True}},
        ),
    ]


def start_redis(run_dir: Path) -> tuple[ManagedProcess, str]:
    """A private redis-server on a free loopback port, no persistence, for the governance variants."""
    port = free_port()
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    process = start_process("redis", argv, run_dir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return process, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    process.stop()
    raise RuntimeError(f"redis-server did not start:\n{process.log_tail()}")


def litellm_config(upstream: Upstream, master_key: str | None) -> str:
    """LiteLLM's proxy config: the same two models on the same nginx, no database, no callbacks."""
    config: dict[str, object] = {
        "model_list": [
            _litellm_model(CHAT_MODEL, upstream.chat_base),
            _litellm_model(STREAM_MODEL, upstream.stream_base),
        ],
        "litellm_settings": {"telemetry": False},
    }
    # Without a key LiteLLM refuses to start unless told that open access is intended.
    general = (
        {"master_key": master_key} if master_key else {"dangerously_permit_weak_or_unset_master_key": True}
    )
    config["general_settings"] = general
    return yaml.safe_dump(config, sort_keys=False)


def _litellm_model(name: str, api_base: str) -> dict[str, object]:
    params = {
        "model": f"openai/{CHAT_MODEL}",
        "api_base": api_base,
        "api_key": "dummy",
        "input_cost_per_token": BENCH_PRICE_PER_MTOK[0] / 1e6,
        "output_cost_per_token": BENCH_PRICE_PER_MTOK[1] / 1e6,
    }
    return {"model_name": name, "litellm_params": params}


def litellm_available(venv: Path = LITELLM_VENV) -> bool:
    """Tell whether the separate LiteLLM venv exists (README.md says how to make it)."""
    return (venv / "bin" / "litellm").exists()


def start_litellm(
    run_dir: Path, upstream: Upstream, master_key: str | None, venv: Path = LITELLM_VENV
) -> Target:
    """Start LiteLLM's proxy with one worker, fully offline, in front of the same nginx."""
    config_path = run_dir / "litellm.yaml"
    config_path.write_text(litellm_config(upstream, master_key))
    port = free_port()
    argv = [str(venv / "bin" / "litellm"), "--config", str(config_path), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--num_workers", "1"]
    env = {name: value for name, value in os.environ.items() if name not in _LITELLM_UNSET}
    env |= {
        "LITELLM_OFFLINE_MODE": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MODE": "PRODUCTION",  # do not load a stray .env file
    }
    process = start_process("litellm", argv, run_dir, env)
    return _gateway_target(LITELLM_NAME, process, port, master_key, startup_s=120)


def _gateway_target(
    name: str, process: ManagedProcess, port: int, master_key: str | None, startup_s: float
) -> Target:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    chat = Endpoint(url, request_body(CHAT_MODEL, False), master_key)
    stream = Endpoint(url, request_body(STREAM_MODEL, True), master_key)
    return Target(name=name, process=process, chat=chat, stream=stream, startup_s=startup_s)


def wait_until_serving(target: Target) -> None:
    """Wait until `target` answers a valid completion, then check that it streams a valid one too."""
    wait_until_ready(target.process, target.chat, target.startup_s)
    problem = asyncio.run(check_answer(target.stream, streaming=True))
    if problem:
        raise RuntimeError(f"{target.name} streams a wrong answer: {problem}\n{target.process.log_tail()}")


def wait_until_ready(process: ManagedProcess, endpoint: Endpoint, timeout_s: float) -> None:
    """Poll until `endpoint` returns a valid completion; fail early, with its log, if the server dies."""
    deadline = time.monotonic() + timeout_s
    problem: str | None = "not tried"
    while time.monotonic() < deadline:
        if process.has_exited():
            raise RuntimeError(f"{process.name} exited during startup:\n{process.log_tail()}")
        problem = asyncio.run(check_answer(endpoint, streaming=False))
        if problem is None:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{process.name} not ready after {timeout_s:.0f}s: {problem}\n{process.log_tail()}")
