"""The one place the config file and the environment are read: YAML → validated `Settings`.

Values may reference the environment as `${NAME}` (or `${NAME:-default}`); a reference to an unset
variable with no default is an error naming the key path, never a silent empty string. Every validation
problem is reported with its exact key path (`models[1].deployments[0].provider`), all at once, so
`ferryman check-config` shows the whole list in one run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ferryman.errors import ConfigError
from ferryman.providers import PROVIDERS, provider_class

DependencyName = Literal["database", "redis"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    """Config sections reject unknown keys, so a typo is an error instead of a silently ignored line."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Upstream timeouts in seconds; `total` bounds a whole non-streamed call (streams use `read`)."""

    connect: Annotated[float, Field(gt=0)] = 5.0
    read: Annotated[float, Field(gt=0)] = 300.0
    total: Annotated[float, Field(gt=0)] | None = 600.0


class PriceOverride(_Strict):
    """A deployment's own price in USD per million tokens (negotiated rates, self-hosted models).

    Cache rates left out bill at the input rate. `max_output_tokens` left out keeps the pinned table's
    figure for the model, if it has one: a negotiated rate does not change how long an answer can be.
    """

    input_per_mtok: Annotated[float, Field(ge=0)]
    output_per_mtok: Annotated[float, Field(ge=0)]
    cached_input_per_mtok: Annotated[float, Field(ge=0)] | None = None
    cache_write_per_mtok: Annotated[float, Field(ge=0)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None


class RateLimit(_Strict):
    """Requests and tokens per minute and concurrent requests of one scope; omitted means unlimited."""

    rpm: Annotated[int, Field(ge=1, le=10**12)] | None = None
    tpm: Annotated[int, Field(ge=1, le=10**15)] | None = None
    max_parallel: Annotated[int, Field(ge=1, le=10**9)] | None = None


class Deployment(_Strict):
    """One upstream that serves a model: a provider, its model id, where and how to reach it."""

    provider: str = Field(description="One of the names registered in `ferryman.providers.PROVIDERS`.")
    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: SecretStr | None = None
    api_version: str | None = Field(default=None, description="Azure-style `api-version` query value.")
    headers: dict[str, str] = Field(default_factory=dict)
    weight: Annotated[int, Field(ge=0)] = 1
    limits: RateLimit | None = Field(
        default=None,
        description="The upstream's own quota for this deployment: at its limit a request goes to the "
        "next deployment instead, so the provider never answers 429.",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts)
    price: PriceOverride | None = None
    name: str | None = Field(
        default=None, description="Label in logs and metrics; defaults to provider/model."
    )

    @field_validator("provider")
    @classmethod
    def _provider_is_registered(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise ValueError(f"must be one of {', '.join(repr(name) for name in PROVIDERS)}, not {value!r}")
        return value

    @field_validator("api_base")
    @classmethod
    def _api_base_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _openai_compatible_needs_base(self) -> Deployment:
        if self.provider == "openai-compatible" and not self.api_base:
            raise ValueError("openai-compatible deployments need an api_base")
        return self

    @property
    def label(self) -> str:
        """A stable, human-readable name for logs and metrics."""
        return self.name or f"{self.provider}/{self.model}"

    @property
    def base_url(self) -> str:
        """The upstream base URL: the configured one, or the provider's public default."""
        return self.api_base or provider_class(self.provider).default_api_base


class ModelRoute(_Strict):
    """A model name clients send, and the deployments that serve it."""

    name: str = Field(min_length=1)
    deployments: list[Deployment] = Field(min_length=1)
    limits: RateLimit | None = None


class ServerSettings(_Strict):
    """How the HTTP server listens and behaves at its edges."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1)] = 1
    max_body_bytes: Annotated[int, Field(gt=0)] = 10 * 1024 * 1024
    shutdown_delay_seconds: Annotated[float, Field(ge=0)] = 5.0
    drain_timeout_seconds: Annotated[float, Field(ge=0)] = 30.0


class LoggingSettings(_Strict):
    """Structured logs to stdout; bodies only when explicitly asked for."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"
    log_bodies: bool = False


class TracingSettings(_Strict):
    """OpenTelemetry tracing; off by default (and then free). OTLP reads the standard `OTEL_*` variables."""

    enabled: bool = False
    service_name: str = "ferryman"
    exporter: Literal["otlp", "console"] = "otlp"


class BudgetSettings(_Strict):
    """Spending caps in USD per day and per month; enforced by the budget layer."""

    daily_usd: Annotated[float, Field(ge=0)] | None = None
    monthly_usd: Annotated[float, Field(ge=0)] | None = None


EndUserId = Annotated[str, Field(min_length=1, max_length=256)]  # as `x-ferryman-end-user` bounds it


class BudgetsSettings(_Strict):
    """Gateway-wide and per-end-user budgets, their windows' time zone, and alerts.

    Keys and teams carry their own `budget`; every budget that applies to a request is reserved
    together, at the request's worst-case cost, before the upstream is called.
    """

    global_: BudgetSettings | None = Field(default=None, alias="global")
    end_user: BudgetSettings | None = Field(
        default=None,
        description="Applies to each end user, per key, unless the key, its team or an explicit budget "
        "of the end user sets one.",
    )
    end_users: dict[EndUserId, BudgetSettings] = Field(
        default_factory=dict,
        description="Explicit budgets of named end users, under every key (a key's own for the same end "
        "user wins): they replace the defaults for that end user.",
    )
    timezone: str = Field(default="UTC", description="Where daily and monthly windows start (IANA name).")
    alert_thresholds: list[Annotated[float, Field(gt=0, le=10)]] = Field(default_factory=lambda: [0.8, 1.0])
    alert_webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    hold_ttl_seconds: Annotated[float, Field(gt=0)] = 900.0

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class StaticKey(_Strict):
    """A client key declared in the config file, so auth works without a database.

    Give the secret itself (`key: ${APP_KEY}`) or only its SHA-256 (`key_hash`, from `ferryman keys hash`),
    so the file never holds a usable key.
    """

    alias: str = Field(min_length=1)
    key: SecretStr | None = None
    key_hash: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] | None = Field(default=None, min_length=1)
    rpm_limit: Annotated[int, Field(ge=1)] | None = None
    tpm_limit: Annotated[int, Field(ge=1)] | None = None
    max_parallel: Annotated[int, Field(ge=1)] | None = None
    budget: BudgetSettings | None = None
    end_user_budget: BudgetSettings | None = Field(
        default=None, description="The default budget of each end user of this key."
    )
    end_user_budgets: dict[EndUserId, BudgetSettings] = Field(
        default_factory=dict,
        description="End users whose own budget replaces the default ones (`{}`: no end-user budget).",
    )
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> StaticKey:
        if (self.key is None) == (self.key_hash is None):
            raise ValueError("give exactly one of key or key_hash")
        return self


class LimitsSettings(_Strict):
    """Gateway-wide rate limits, the default per end user, and what to do while Redis is unreachable.

    Keys and teams carry their own `rpm_limit` / `tpm_limit` / `max_parallel`; models and deployments
    their own `limits`. Under `fail_open` (the default) each replica enforces `1 / expected_replicas` of
    every limit from its own memory until Redis answers again; under `fail_closed` limited requests are
    refused (503) meanwhile.
    """

    global_: RateLimit | None = Field(default=None, alias="global")
    end_user: RateLimit | None = Field(default=None, description="Applies to each end user separately.")
    on_redis_failure: Literal["fail_open", "fail_closed"] = "fail_open"
    expected_replicas: Annotated[int, Field(ge=1, le=10_000)] = 1
    slot_ttl_seconds: Annotated[float, Field(gt=0)] = Field(
        default=900.0,
        description="How long a concurrency slot outlives a replica that died holding it.",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HealthSettings(_Strict):
    """Which dependencies readiness requires, and how often they are checked.

    A dependency not listed in `required` is *degradable*: when it is down, `/health` and the
    `ai_api_dependency_up` gauge say so but the replica stays ready. Redis is degradable by default:
    without it, key revocations reach other replicas by cache expiry instead of at once.
    """

    required: list[DependencyName] = Field(default_factory=lambda: list[DependencyName](["database"]))
    check_interval_seconds: Annotated[float, Field(gt=0)] = 5.0


class MetricsSettings(_Strict):
    """`/metrics` exposure: open by default (scrapers rarely hold secrets), or behind a bearer token."""

    token: SecretStr | None = None


class Settings(_Strict):
    """The whole validated configuration, built once and passed down."""

    master_key: SecretStr | None = None
    database_url: str | None = None
    data_dir: str = Field(
        default=".ferryman",
        min_length=1,
        description="Where the embedded SQLite database lives when no database_url is set; `:memory:` "
        "keeps it in memory (gone on restart, and per worker process).",
    )
    redis_url: str | None = None
    server: ServerSettings = Field(default_factory=ServerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    budgets: BudgetsSettings = Field(default_factory=BudgetsSettings)
    models: list[ModelRoute] = Field(default_factory=list)
    keys: list[StaticKey] = Field(default_factory=list)
    auto_migrate: bool = True
    key_cache_ttl_seconds: Annotated[float, Field(ge=0)] = 30.0

    @model_validator(mode="after")
    def _model_names_unique(self) -> Settings:
        seen: set[str] = set()
        for route in self.models:
            if route.name in seen:
                raise ValueError(f"model name {route.name!r} is defined twice")
            seen.add(route.name)
        return self

    @model_validator(mode="after")
    def _key_aliases_unique(self) -> Settings:
        aliases = [key.alias for key in self.keys]
        for alias in aliases:
            if aliases.count(alias) > 1:
                raise ValueError(f"key alias {alias!r} is defined twice")
        return self

    @property
    def data_path(self) -> Path:
        """`data_dir` as an absolute path (meaningless for `:memory:`)."""
        return Path(self.data_dir).expanduser().absolute()

    @property
    def store_url(self) -> str:
        """The database keys, teams (and soon budgets and the ledger) live in: `database_url`, or the
        embedded SQLite file in `data_dir` (an in-memory one for `:memory:`)."""
        if self.database_url:
            return self.database_url
        if self.data_dir == ":memory:":
            return "sqlite+aiosqlite://"
        return f"sqlite+aiosqlite:///{self.data_path / 'ferryman.db'}"

    def with_server(self, **overrides: object) -> Settings:
        """A copy with server fields replaced (CLI flags win over the file)."""
        server = self.server.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        return self.model_copy(update={"server": server})


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, interpolate and validate a config file; `None` loads the embedded example."""
    text = _read_config_text(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("<file>", f"not valid YAML: {exc}")]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("<root>", "the config must be a mapping of keys to values")])
    problems: list[tuple[str, str]] = []
    data = _interpolate(raw, "", os.environ if environ is None else environ, problems)
    if problems:
        raise ConfigError(problems)
    return settings_from_mapping(data)


def settings_from_mapping(data: object) -> Settings:
    """Validate already-parsed config data, turning pydantic's errors into key-path problems."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([(_key_path(err["loc"]), err["msg"]) for err in exc.errors()]) from exc


def _read_config_text(path: str | Path | None) -> str:
    if path is None:
        return resources.files("ferryman").joinpath("example.yaml").read_text(encoding="utf-8")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot read {path}: {exc.strerror}")]) from exc


def _interpolate(
    node: object, path: str, environ: Mapping[str, str], problems: list[tuple[str, str]]
) -> object:
    """Replace `${NAME}` references in every string, recording unset variables with their key path."""
    if isinstance(node, dict):
        return {
            key: _interpolate(value, f"{path}.{key}" if path else str(key), environ, problems)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(item, f"{path}[{i}]", environ, problems) for i, item in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _substitute(node, path, environ, problems)
    return node


def _substitute(value: str, path: str, environ: Mapping[str, str], problems: list[tuple[str, str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(replace, value)


def _key_path(loc: tuple[int | str, ...]) -> str:
    """Render pydantic's location tuple as `models[0].deployments[1].provider`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[")):
            out += f".{part}" if out else str(part)
    return out or "<root>"
