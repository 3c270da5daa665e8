"""The `ferryman` command: `serve` the gateway, `check-config` a file before deploying it, and
`db` / `keys` / `teams` to migrate the database and administer keys (see `ferryman.cli_keys`), and
`models reencrypt` after rotating the credential encryption key (`ferryman.cli_models`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

from ferryman import __version__
from ferryman.api.app import WORKERS_ENV, GatewayApp, create_app
from ferryman.api.header_cap import cap_request_heads
from ferryman.api.tls import ReloadingContextFactory, certificate_problems
from ferryman.cli_keys import add_admin_commands, run_admin_command
from ferryman.cli_models import add_models_command, run_models_command
from ferryman.core.pricing import price_for
from ferryman.errors import ConfigError
from ferryman.observability.logging import configure_logging
from ferryman.settings import Settings, load_settings
from ferryman.store._redis_connect import parse_redis_url
from ferryman.store.migrate import SchemaBehindError, ensure_schema


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command in ("db", "keys", "teams", "audit", "spend"):
        return run_admin_command(args)
    if args.command == "openapi":
        return _openapi(args.config, args.output)
    if args.command == "models":
        return run_models_command(args)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferryman", description="A self-hosted AI API gateway.")
    parser.add_argument("--version", action="version", version=f"ferryman {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve the gateway (the embedded example without --config)")
    serve.add_argument("--config", help="YAML config file; omit to serve the embedded example")
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (overrides server.workers)")
    check = commands.add_parser("check-config", help="validate a config file; non-zero exit on any error")
    check.add_argument("file")
    add_admin_commands(commands)
    add_models_command(commands)
    openapi = commands.add_parser("openapi", help="print the OpenAPI schema of the whole API as JSON")
    openapi.add_argument("--config", help="YAML config file; omit to use the embedded example")
    openapi.add_argument("--output", help="write the schema to this file instead of stdout")
    return parser


def _check_config(path: str) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return 1
    problems = _unpriced(settings) + _redis_url_problems(settings) + _tls_problems(settings)
    if problems:
        _print_problems(path, problems)
        return 1
    deployments = sum(len(route.deployments) for route in settings.models)
    print(f"{path}: OK ({len(settings.models)} models, {deployments} deployments)")
    return 0


def _tls_problems(settings: Settings) -> list[tuple[str, str]]:
    """A certificate and key that do not load together, found before the server tries to serve them."""
    tls = settings.server.tls
    return certificate_problems(tls) if tls is not None else []


def _redis_url_problems(settings: Settings) -> list[tuple[str, str]]:
    """A `redis_url` the gateway could not connect with, found before it serves (never echoing it)."""
    if not settings.redis_url:
        return []
    try:
        parse_redis_url(settings.redis_url)
    except ConfigError as exc:
        return exc.problems
    return []


def _unpriced(settings: Settings) -> list[tuple[str, str]]:
    """Deployments whose cost would be unknown: an error here, so no model is ever silently free."""
    return [
        (
            f"models[{i}].deployments[{j}].price",
            f"no pinned price for upstream model {d.model!r}; set price.input_per_mtok / output_per_mtok",
        )
        for i, route in enumerate(settings.models)
        for j, d in enumerate(route.deployments)
        if d.price is None and price_for(d.model) is None
    ]


def _print_problems(path: str, problems: list[tuple[str, str]]) -> None:
    print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
    for key_path, message in problems:
        print(f"  {key_path}: {message}", file=sys.stderr)


def _openapi(config: str | None, output: str | None) -> int:
    """The document `/openapi.json` serves, without starting a server (for client generators and CI)."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _print_problems(config or "<embedded example>", exc.problems)
        return 1
    text = json.dumps(create_app(settings).openapi(), indent=2) + "\n"
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config).with_server(
            host=args.host, port=args.port, workers=args.workers
        )
    except ConfigError as exc:
        _print_problems(args.config or "<embedded example>", exc.problems)
        return 1
    if tls_problems := _tls_problems(settings):
        _print_problems(args.config or "<embedded example>", tls_problems)
        return 1
    configure_logging(settings.logging.level, settings.logging.format)
    if settings.database_url:  # the embedded database migrates in each worker's start-up, under a lock
        try:  # migrate once here, before any worker starts; or refuse a schema behind head
            hint = args.config or "FILE"
            asyncio.run(
                ensure_schema(settings.database_url, auto_migrate=settings.auto_migrate, config_hint=hint)
            )
        except SchemaBehindError as exc:
            print(f"ferryman: {exc.message}", file=sys.stderr)
            return 1
    if settings.server.workers > 1:
        # Each worker builds its own app from the same file; uvicorn supervises them.
        if args.config:
            os.environ["FERRYMAN_CONFIG"] = os.path.abspath(args.config)
        os.environ[WORKERS_ENV] = str(settings.server.workers)  # `--workers` too: budgets need to know
        _prepare_multiprocess_metrics()
        config = _uvicorn_config("ferryman.api.app:app_from_env", settings)
        supervisor = Multiprocess(config, sockets=[config.bind_socket(), *_admin_socket(settings)])
        supervisor.run()
        return 0
    app = create_app(settings)
    config = _uvicorn_config(app, settings)
    server = DrainingServer(config, app, settings.server.shutdown_delay_seconds)
    admin_socket = _admin_socket(settings)
    server.run(sockets=[config.bind_socket(), *admin_socket] if admin_socket else None)
    return 0 if server.started else 1  # a failed start-up (lifespan error, port taken) is a failure


def _admin_socket(settings: Settings) -> list[socket.socket]:
    """The admin API's own listening socket, when `server.admin_port` asks for one."""
    server = settings.server
    if server.admin_port is None:
        return []
    admin = uvicorn.Config("unused", host=server.admin_host or server.host, port=server.admin_port)
    return [admin.bind_socket()]


def _prepare_multiprocess_metrics() -> None:
    """Give the workers one empty directory to share metric values through, so /metrics adds them up.

    Stale files from an earlier run would be added up too, so a configured directory is emptied first.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ferryman-metrics-")
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def _uvicorn_config(app: GatewayApp | str, settings: Settings) -> uvicorn.Config:
    """The fast path: uvloop + httptools (with a cap on request heads), no access log (we write our
    own, richer line)."""
    server, tls = settings.server, settings.server.tls
    config = uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=server.host,
        port=server.port,
        workers=server.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(server.drain_timeout_seconds) or None,
        # X-Forwarded-* are read by the app, from `server.trusted_proxies` only (api/client_ip.py);
        # uvicorn's own handling would believe any loopback peer first.
        proxy_headers=False,
        ssl_certfile=tls.cert_file if tls else None,
        ssl_keyfile=tls.key_file if tls else None,
        ssl_context_factory=ReloadingContextFactory(tls) if tls else None,
    )
    return cap_request_heads(config, server.max_header_bytes)


class DrainingServer(uvicorn.Server):
    """On SIGTERM, fail readiness at once and keep serving for `delay` seconds before closing.

    Load balancers and Kubernetes endpoints need a moment to notice a failing readiness probe; closing
    the listener first would turn that moment into refused connections. After the delay uvicorn stops
    accepting and lets in-flight requests and streams finish within `timeout_graceful_shutdown`.
    A second signal exits without waiting.
    """

    def __init__(self, config: uvicorn.Config, app: GatewayApp, delay: float) -> None:
        super().__init__(config)
        self._app = app
        self._delay = delay
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First SIGTERM / SIGINT: drain, then exit 0; the next one: exit now, by the signal."""
        state = getattr(self._app.state, "ferryman", None)
        if self._draining or state is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self._draining = True
        state.draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(loop.call_later, self._delay, self._stop_accepting)

    def _stop_accepting(self) -> None:
        # Setting should_exit (rather than re-entering handle_exit) keeps the signal from being
        # re-raised after shutdown: a completed drain is a clean exit, status 0.
        self.should_exit = True


if __name__ == "__main__":
    raise SystemExit(main())
