"""The one place the config file and the environment are read: YAML → validated `Settings`.

Values may reference the environment as `${NAME}` (or `${NAME:-default}`); a reference to an unset
variable with no default is an error naming the key path, never a silent empty string. Secrets may be
references instead (`file:/path`, `aws-sm:name#field`, `vault:path#field`: see `ferryman.secret_refs`),
read here and kept current while serving. Every validation
problem is reported with its exact key path (`models[1].deployments[0].provider`), all at once, so
`ferryman check-config` shows the whole list in one run.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
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
from ferryman.secret_refs import resolve_references

DependencyName = Literal["database", "redis"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _is_a_file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
    return value


def _is_a_ca_bundle(value: str) -> str:
    try:
        ssl.create_default_context(cafile=value)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot load CA certificates from {value}: {exc}") from exc
    return value


ExistingFile = Annotated[str, AfterValidator(_is_a_file)]  # a path checked when the config is read
CaBundle = Annotated[str, AfterValidator(_is_a_ca_bundle)]  # a PEM file of at least one CA certificate


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


class AnthropicBetas(_Strict):
    """Which `anthropic-beta` features a client may turn on at an Anthropic upstream (other providers
    never see the header). With `allow`, only those are forwarded; any in `deny` never are."""

    allow: list[str] | None = Field(default=None, description="Forward only these; unset: all.")
    deny: list[str] = Field(default_factory=list, description="Never forward these.")

    def permit(self, betas: tuple[str, ...]) -> tuple[str, ...]:
        """The betas of `betas` this list lets through, in the client's order."""
        return tuple(
            beta for beta in betas if beta not in self.deny and (self.allow is None or beta in self.allow)
        )


class Deployment(_Strict):
    """One upstream that serves a model: a provider, its model id, where and how to reach it."""

    provider: str = Field(description="One of the names registered in `ferryman.providers.PROVIDERS`.")
    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: SecretStr | None = None
    api_version: str | None = Field(default=None, description="Azure-style `api-version` query value.")
    headers: dict[str, str] = Field(default_factory=dict)
    weight: Annotated[int, Field(ge=0)] = 1
    priority: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="Under `strategy: priority`, lower goes first; deployments without one follow in "
        "list order.",
    )
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
    ca_bundle: CaBundle | None = Field(
        default=None,
        description="PEM file of the CAs that sign this upstream's certificate, trusted instead of the "
        "system's (`upstream_ca_bundle` when unset).",
    )
    verify_tls: bool = Field(
        default=True, description="Verify the upstream's certificate; `false` only for local testing."
    )
    anthropic_betas: AnthropicBetas = Field(
        default_factory=AnthropicBetas,
        description="This deployment's `anthropic-beta` allow / deny list; the model's when unset.",
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


class InputCaps(_Strict):
    """How much one request may carry, refused with a 400 naming the field before any limit, budget or
    upstream sees it. `input_caps:` sets the gateway's; a model's `input_caps` overrides the fields it
    sets. The defaults sit above what any provider accepts, so they only stop abuse (a million-message
    body inside the size cap); `max_tokens` has none unless set, since models' ceilings differ.
    """

    max_messages: Annotated[int, Field(ge=1)] | None = 5_000
    max_tools: Annotated[int, Field(ge=0)] | None = 512
    max_images: Annotated[int, Field(ge=0)] | None = 500
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_embedding_inputs: Annotated[int, Field(ge=1)] | None = 2_048

    def over(self, override: InputCaps | None) -> InputCaps:
        """These caps with the fields `override` set explicitly put over them."""
        if override is None:
            return self
        return self.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})


class CacheOverride(_Strict):
    """A model's own response-cache settings (`models[].cache`); what it leaves unset follows `cache:`."""

    enabled: bool | None = None
    ttl_seconds: Annotated[float, Field(gt=0)] | None = None
    cache_nonzero_temperature: bool | None = None


class ModelRoute(_Strict):
    """A model name clients send, and the deployments that serve it."""

    name: str = Field(min_length=1)
    deployments: list[Deployment] = Field(min_length=1)
    limits: RateLimit | None = None
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Other models to try, in order, once every deployment of this one has failed (or "
        "refused the prompt's length or content). A request's own list replaces this one.",
    )
    timeout_seconds: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="End to end, across every attempt and retry (a whole stream included): then 504. "
        "A request may ask for less, never more.",
    )
    first_token_timeout_seconds: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="How long a stream's first batch may take from one deployment before the next is tried.",
    )
    cache: CacheOverride | None = Field(
        default=None, description="This model's own response-cache settings (docs/caching.md)."
    )
    input_caps: InputCaps | None = Field(
        default=None, description="This model's own caps on one request; unset fields follow `input_caps:`."
    )
    strategy: Literal["weighted", "least_busy", "lowest_latency", "most_headroom", "priority"] = Field(
        default="weighted",
        description="In what order a request tries the deployments (docs/routing.md).",
    )
    anthropic_betas: AnthropicBetas | None = Field(
        default=None,
        description="Which `anthropic-beta` features clients may use on this model's Anthropic "
        "deployments (default: all); a deployment's own list wins.",
    )

    @model_validator(mode="after")
    def _betas_reach_deployments(self) -> ModelRoute:
        # The provider sees only its deployment, so the model's list is handed down to each one
        # without its own (the list is replaced in place: the route itself is frozen).
        betas = self.anthropic_betas
        if betas is not None:
            self.deployments[:] = [
                d
                if "anthropic_betas" in d.model_fields_set
                else d.model_copy(update={"anthropic_betas": betas})
                for d in self.deployments
            ]
        return self


class RetrySettings(_Strict):
    """Retries of the same deployment, and the budget that keeps them from multiplying an outage.

    A 429, 5xx, timeout or dropped connection is retried on the same deployment after the upstream's
    `Retry-After` (up to `max_delay_seconds`; longer ones move on at once) or an exponential backoff
    with full jitter; then the next deployment, then the fallback models. Over any
    `budget_window_seconds`, retries add at most `budget_ratio` to the first attempts, plus
    `min_retries_per_second` so a quiet gateway can still retry (docs/resilience.md).
    """

    max_attempts_per_deployment: Annotated[int, Field(ge=1, le=10)] = 2
    base_delay_seconds: Annotated[float, Field(ge=0, le=60)] = 0.25
    max_delay_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    budget_ratio: Annotated[float, Field(ge=0, le=10)] = 0.2
    budget_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    min_retries_per_second: Annotated[float, Field(ge=0)] = 1.0


class BreakerSettings(_Strict):
    """Each deployment's circuit breaker (docs/routing.md): open after `failure_threshold` upstream
    failures in a row, or `failure_ratio` of at least `min_requests` attempts in `window_seconds`;
    passed over for `cooldown_seconds`, then `half_open_probes` requests probe it. `shared: auto`
    shares open circuits through Redis when `redis_url` is set; `local` keeps each replica's own."""

    failure_threshold: Annotated[int, Field(ge=1, le=10_000)] = 5
    failure_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    min_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    cooldown_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    half_open_probes: Annotated[int, Field(ge=1, le=1_000)] = 1
    shared: Literal["auto", "local"] = "auto"
    sync_interval_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="How often a replica reads the fleet's open circuits from Redis."
    )


class TlsSettings(_Strict):
    """The certificate the gateway serves HTTPS with (docs/tls.md), read again when its files change."""

    cert_file: ExistingFile = Field(description="PEM certificate chain, leaf first.")
    key_file: ExistingFile | None = Field(
        default=None, description="PEM private key; omit when in `cert_file`."
    )
    reload_seconds: Annotated[float, Field(ge=0)] = Field(
        default=60.0, description="How often the files are checked for a new certificate; 0: never."
    )


class CorsSettings(_Strict):
    """Which browser origins may call the gateway (`server.cors`). Off unless origins are listed: a key
    in a web page is a leaked key, so cross-origin calls are a choice an operator makes, per origin."""

    allow_origins: list[str] = Field(
        default_factory=list, description="Exact origins (`https://app.example.com`), or `*` for any."
    )
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "PATCH", "DELETE"])
    allow_headers: list[str] = Field(
        default_factory=lambda: [
            "authorization",
            "content-type",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "anthropic-version",
            "anthropic-beta",
            "x-request-id",
        ]
    )
    allow_credentials: bool = False
    max_age_seconds: Annotated[int, Field(ge=0)] = 600

    @model_validator(mode="after")
    def _no_credentials_for_any_origin(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials needs explicit origins, not '*'")
        return self


class HstsSettings(_Strict):
    """The `Strict-Transport-Security` header sent on every answer given over HTTPS."""

    enabled: bool = True
    max_age_seconds: Annotated[int, Field(ge=0)] = 31_536_000
    include_subdomains: bool = True
    preload: bool = False

    @property
    def header(self) -> str | None:
        """The header's value, or None when it is not sent."""
        if not self.enabled:
            return None
        value = f"max-age={self.max_age_seconds}"
        if self.include_subdomains:
            value += "; includeSubDomains"
        return value + "; preload" if self.preload else value


class ServerSettings(_Strict):
    """How the HTTP server listens and behaves at its edges."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    admin_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None,
        description="Serve the admin API on this port only (and nothing else but the probes there).",
    )
    admin_host: str | None = Field(
        default=None, description="The interface of `admin_port` (a private one); `host` when unset."
    )
    workers: Annotated[int, Field(ge=1)] = 1
    max_body_bytes: Annotated[int, Field(gt=0)] = 10 * 1024 * 1024
    max_header_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=64 * 1024,
        description="The request line and headers together; past it, 431 and the connection closed.",
    )
    shutdown_delay_seconds: Annotated[float, Field(ge=0)] = 5.0
    drain_timeout_seconds: Annotated[float, Field(ge=0)] = 30.0
    tls: TlsSettings | None = None
    require_https: bool = Field(
        default=False,
        description="Refuse requests that did not come over HTTPS (natively or via a trusted proxy).",
    )
    plain_http_paths: list[str] = Field(
        default_factory=lambda: ["/health/live", "/health/ready"],
        description="Paths still answered over plain HTTP under `require_https` (the kubelet's probes).",
    )
    hsts: HstsSettings = Field(default_factory=HstsSettings)
    cors: CorsSettings = Field(
        default_factory=CorsSettings,
        description="Cross-origin browser access; off unless origins are listed.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDRs whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _are_networks(cls, values: list[str]) -> list[str]:
        networks = []
        for value in values:
            try:
                networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or CIDR") from exc
        return networks


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
    role: Literal["viewer", "admin"] | None = Field(
        default=None,
        description="Admin role: `viewer` reads the admin API, `admin` may change it; none (default): "
        "an API key only.",
    )

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


class CacheSettings(_Strict):
    """The response cache (docs/caching.md): exact repeats answered at $0, off by default."""

    enabled: bool = False
    ttl_seconds: Annotated[float, Field(gt=0)] = 3600.0
    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="`memory`: each process its own, bounded by `max_bytes`; `redis`: shared by replicas "
        "through `redis_url` (bounded by Redis's own `maxmemory`).",
    )
    scope: Literal["key", "team", "global"] = Field(
        default="key", description="Who shares an entry: the calling key, its team, or every caller."
    )
    max_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    cache_nonzero_temperature: bool = Field(
        default=False,
        description="Also cache requests whose temperature is above 0 or unset (sampled answers).",
    )


class SecretsSettings(_Strict):
    """How often secret references (`file:`, `aws-sm:`, `vault:`) are read again (docs/secrets.md)."""

    refresh_seconds: Annotated[float, Field(ge=0)] = Field(
        default=300.0,
        description="Seconds between re-reads of every referenced secret; 0 reads them again only on SIGHUP.",
    )


class EncryptionSettings(_Strict):
    """The key that seals provider credentials stored in SQL (runtime models, `docs/secrets.md`).

    `key` defaults to `FERRYMAN_ENCRYPTION_KEY` and `previous_keys` to the comma-separated
    `FERRYMAN_ENCRYPTION_KEY_PREVIOUS`; either may be a secret reference (`file:`, `aws-sm:`, `vault:`).
    Previous keys only decrypt: `ferryman models reencrypt` rewrites every row under `key`.
    """

    key: SecretStr | None = Field(
        default=None, description="32 random bytes, base64 or hex (`openssl rand -base64 32`)."
    )
    previous_keys: list[SecretStr] = Field(
        default_factory=list, max_length=16, description="Keys rotated out, still accepted to decrypt."
    )

    @model_validator(mode="after")
    def _keys_are_keys(self) -> EncryptionSettings:
        # Imported here: the store's modules import settings, not the other way round at import time.
        from ferryman.store.encryption import CredentialCipher

        if self.key is None:
            if self.previous_keys:
                raise ValueError("previous_keys without a key: set encryption.key (FERRYMAN_ENCRYPTION_KEY)")
            return self
        try:
            CredentialCipher.from_texts(
                self.key.get_secret_value(), [k.get_secret_value() for k in self.previous_keys]
            )
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return self


class ResponsesSettings(_Strict):
    """The Responses API's stored answers (`/v1/responses`), which `previous_response_id` continues."""

    ttl_seconds: Annotated[float, Field(gt=0)] = Field(
        default=2_592_000.0, description="How long a stored response can be retrieved or continued (30 days)."
    )


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
    input_caps: InputCaps = Field(default_factory=InputCaps)
    budgets: BudgetsSettings = Field(default_factory=BudgetsSettings)
    models: list[ModelRoute] = Field(default_factory=list)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    keys: list[StaticKey] = Field(default_factory=list)
    auto_migrate: bool = True
    key_cache_ttl_seconds: Annotated[float, Field(ge=0)] = 30.0
    upstream_ca_bundle: CaBundle | None = Field(
        default=None,
        description="PEM file of the CAs trusted for every upstream without its own `ca_bundle`.",
    )

    @model_validator(mode="after")
    def _model_names_unique(self) -> Settings:
        seen: set[str] = set()
        for route in self.models:
            if route.name in seen:
                raise ValueError(f"model name {route.name!r} is defined twice")
            seen.add(route.name)
        return self

    @model_validator(mode="after")
    def _fallbacks_are_other_models(self) -> Settings:
        names = {route.name for route in self.models}
        for route in self.models:
            for fallback in route.fallbacks:
                if fallback == route.name:
                    raise ValueError(f"model {route.name!r} lists itself as a fallback")
                if fallback not in names:
                    raise ValueError(f"model {route.name!r} falls back to {fallback!r}, which is not a model")
        return self

    @model_validator(mode="after")
    def _redis_cache_needs_redis(self) -> Settings:
        if self.cache.backend == "redis" and not self.redis_url:
            raise ValueError("cache.backend 'redis' needs redis_url (or use backend 'memory')")
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
    environ = os.environ if environ is None else environ
    raw = _encryption_from_environ(raw, environ)
    data = resolve_references(_interpolate(raw, "", environ, problems), environ, problems)
    if problems:
        raise ConfigError(problems)
    return settings_from_mapping(data)


ENCRYPTION_KEY_ENV = "FERRYMAN_ENCRYPTION_KEY"
ENCRYPTION_PREVIOUS_ENV = "FERRYMAN_ENCRYPTION_KEY_PREVIOUS"


def _encryption_from_environ(raw: dict[str, object], environ: Mapping[str, str]) -> dict[str, object]:
    """`encryption.key` / `previous_keys` from the environment where the file sets none; a value there
    may be a secret reference, resolved with the rest of the file's."""
    section = raw.get("encryption")
    if section is not None and not isinstance(section, dict):
        return raw  # validation reports it
    merged = dict(section or {})
    if "key" not in merged and environ.get(ENCRYPTION_KEY_ENV):
        merged["key"] = environ[ENCRYPTION_KEY_ENV]
    previous = environ.get(ENCRYPTION_PREVIOUS_ENV, "")
    if "previous_keys" not in merged and previous.strip():
        merged["previous_keys"] = [text.strip() for text in previous.split(",") if text.strip()]
    return {**raw, "encryption": merged} if merged else raw


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
