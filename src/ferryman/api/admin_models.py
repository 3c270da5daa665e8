"""`/admin/models`: models and deployments added, changed and removed at runtime, and a connection test.

Runtime models live in SQL (`store/model_store.py`) and are served by every replica within a second or
two (`api/runtime_models.py`); the config file's models are listed too, as `source: "config"` and
read-only (a change to one is a 409). A deployment's `api_key` is sealed with AES-GCM before it is
stored (`store/encryption.py`), refused outright when no encryption key is configured, and never
returned: responses carry `api_key_hint`, its last four characters.

PATCH changes only the fields sent; `deployments`, when sent, is the whole new list, where an item with
the `id` of an existing deployment keeps that deployment's fields (and credential) it does not send.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from starlette.requests import Request

from ferryman.api.runtime_models import ModelCatalog
from ferryman.api.state import AppState
from ferryman.core.canonical import ChatRequest, Message, TextPart
from ferryman.errors import ConflictError, FerrymanError, InvalidRequestError, NotFoundError
from ferryman.providers import PROVIDERS
from ferryman.settings import (
    CacheOverride,
    Deployment,
    InputCaps,
    ModelRoute,
    PriceOverride,
    RateLimit,
    Timeouts,
)
from ferryman.store.encryption import credential_hint
from ferryman.store.model_store import StoredDeployment, StoredModel, credential_row, new_deployment_id

PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
MAX_DEPLOYMENTS = 64
TEST_TIMEOUT = 20.0  # seconds per deployment of a connection test

ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)]
Label = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)]
Strategy = Literal["weighted", "least_busy", "lowest_latency", "most_headroom", "priority"]
Seconds = Annotated[float, Field(gt=0, le=86_400)]


class DeploymentBody(BaseModel):
    """One upstream serving the model (the config file's `deployments[]` fields, minus files and headers)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=32, pattern=PRINTABLE)] | None = Field(
        default=None, description="PATCH: an existing deployment's id keeps what this item leaves out."
    )
    provider: str | None = Field(default=None, description=f"One of: {', '.join(PROVIDERS)}.")
    model: Label | None = Field(default=None, description="The upstream's model id.")
    api_base: Annotated[str, Field(max_length=2048, pattern=PRINTABLE)] | None = None
    api_key: Annotated[SecretStr, Field(min_length=1, max_length=8192)] | None = Field(
        default=None, description="Sealed with AES-GCM at rest; never returned (see `api_key_hint`)."
    )
    api_version: Annotated[str, Field(max_length=64, pattern=PRINTABLE)] | None = None
    weight: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    priority: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    limits: RateLimit | None = None
    timeouts: Timeouts | None = None
    price: PriceOverride | None = None
    name: Label | None = Field(default=None, description="Label in logs and metrics.")
    verify_tls: bool | None = None

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str | None) -> str | None:
        if value is not None and value not in PROVIDERS:
            raise ValueError(f"must be one of {', '.join(repr(name) for name in PROVIDERS)}")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_base(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class ModelPatch(BaseModel):
    """A model's settings; on PATCH only those sent change, and `null` clears one."""

    model_config = ConfigDict(extra="forbid")

    deployments: list[DeploymentBody] | None = Field(default=None, min_length=1, max_length=MAX_DEPLOYMENTS)
    strategy: Strategy | None = None
    fallbacks: list[ModelName] | None = Field(default=None, max_length=16)
    timeout_seconds: Seconds | None = None
    first_token_timeout_seconds: Seconds | None = None
    limits: RateLimit | None = None
    input_caps: InputCaps | None = None
    cache: CacheOverride | None = None


class ModelBody(ModelPatch):
    """A new model: its name and at least one deployment."""

    name: ModelName
    deployments: list[DeploymentBody] = Field(min_length=1, max_length=MAX_DEPLOYMENTS)


class RuntimeDeploymentOut(BaseModel):
    """A deployment as the API shows it: never its credential."""

    id: str | None = Field(description="Runtime deployments' id; null for the config file's.")
    name: str
    provider: str
    model: str
    api_base: str | None
    weight: int
    priority: int | None
    api_key_hint: str | None = Field(description="The credential's last four characters, if it has one.")


class RuntimeModelOut(BaseModel):
    """A model: where it is defined, whether the API may change it, and its deployments."""

    name: str
    source: Literal["config", "runtime"]
    read_only: bool
    strategy: str
    fallbacks: list[str]
    deployments: list[RuntimeDeploymentOut]
    settings: dict[str, Any] = Field(description="Its other settings, as the config file spells them.")
    created_at: datetime | None = None
    updated_at: datetime | None = None
    served: bool = Field(description="Whether this replica serves it now.")


class RuntimeModelList(BaseModel):
    """The config file's models, then the runtime ones."""

    data: list[RuntimeModelOut]


class DeploymentTestResult(BaseModel):
    """One deployment's answer to a one-token request."""

    deployment: str
    ok: bool
    latency_ms: float
    error: str | None = None
    status: int | None = None


class ModelConnectionTest(BaseModel):
    """Each deployment of the model, tried once."""

    model: str
    ok: bool
    deployments: list[DeploymentTestResult]


class ModelDeleted(BaseModel):
    """What DELETE removed."""

    name: str
    deleted: bool


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.ferryman
    return state


def _catalog(state: AppState) -> ModelCatalog:
    if state.models is None:  # pragma: no cover - the lifespan always starts one
        raise RuntimeError("the model catalog is not running")
    return state.models


NamePath = Annotated[str, Path(min_length=1, max_length=200, pattern=PRINTABLE)]


async def list_models(request: Request) -> RuntimeModelList:
    """Every model: the config file's (read-only) and the runtime ones."""
    state = _state(request)
    catalog = _catalog(state)
    out = [_config_out(route, state) for route in state.settings.models]
    out += [_runtime_out(model, state) for model in await catalog.store.list_models()]
    return RuntimeModelList(data=out)


async def get_model(request: Request, name: NamePath) -> RuntimeModelOut:
    """One model, config-file or runtime."""
    state = _state(request)
    route = _config_route(state, name)
    if route is not None:
        return _config_out(route, state)
    return _runtime_out(await _stored(state, name), state)


async def create_model(request: Request, body: ModelBody) -> RuntimeModelOut:
    """Add a runtime model; every replica serves it within seconds."""
    state = _state(request)
    catalog = _catalog(state)
    if catalog.is_config_model(body.name):
        raise ConflictError(
            f"The model `{body.name}` is defined in the config file (read-only)",
            param="name",
            code="model_read_only",
        )
    spec = body.model_dump(mode="json", exclude={"name", "deployments"}, exclude_none=True)
    deployments = [
        _new_deployment(catalog, body.name, i, item, None) for i, item in enumerate(body.deployments)
    ]
    model = StoredModel(body.name, spec, tuple(d for d, _ in deployments))
    _validate(state, model, [key for _, key in deployments])
    stored = await catalog.store.create(model)
    await _announce(state, catalog)
    return _runtime_out(stored, state)


async def update_model(request: Request, body: ModelPatch, name: NamePath) -> RuntimeModelOut:
    """Change a runtime model's settings or deployments (a config-file model is read-only: 409)."""
    state = _state(request)
    catalog = _catalog(state)
    _refuse_config(state, name)
    current = await _stored(state, name)
    spec = dict(current.spec)
    for field in body.model_fields_set - {"deployments"}:
        value = getattr(body, field)
        if value is None:
            spec.pop(field, None)
        else:
            spec[field] = body.model_dump(mode="json", include={field}, exclude_none=True)[field]
    pairs: list[tuple[StoredDeployment, str | None]]
    if body.deployments is None:
        pairs = [(d, _opened(catalog, name, d)) for d in current.deployments]
    else:
        existing = {d.id: d for d in current.deployments}
        pairs = []
        for i, item in enumerate(body.deployments):
            if item.id is not None and item.id not in existing:
                raise InvalidRequestError(
                    f"deployments[{i}].id: no deployment {item.id!r} in this model",
                    param=f"deployments[{i}].id",
                )
            pairs.append(_new_deployment(catalog, name, i, item, existing.get(item.id or "")))
    model = StoredModel(name, spec, tuple(d for d, _ in pairs), current.created_at)
    _validate(state, model, [key for _, key in pairs])
    stored = await catalog.store.replace(model)
    await _announce(state, catalog)
    return _runtime_out(stored, state)


async def delete_model(request: Request, name: NamePath) -> ModelDeleted:
    """Remove a runtime model everywhere (requests already running on it finish)."""
    state = _state(request)
    catalog = _catalog(state)
    _refuse_config(state, name)
    await catalog.store.delete(name)
    await _announce(state, catalog)
    return ModelDeleted(name=name, deleted=True)


async def test_model(request: Request, name: NamePath) -> ModelConnectionTest:
    """Send each deployment a one-token chat request, now, through its real client."""
    state = _state(request)
    if _config_route(state, name) is None:
        await _stored(state, name)  # 404 for a model nobody defines
    targets = state.router.targets(name)
    secrets = _secrets_of(state, name)
    results = list(
        await asyncio.gather(*(_try(t.upstream, t.upstream_model, t.deployment, secrets) for t in targets))
    )
    return ModelConnectionTest(model=name, ok=all(r.ok for r in results), deployments=results)


async def _try(upstream: Any, upstream_model: str, label: str, secrets: list[str]) -> DeploymentTestResult:
    request = ChatRequest(
        model=upstream_model, messages=(Message(role="user", parts=(TextPart("ping"),)),), max_tokens=1
    )
    started = time.perf_counter()
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await upstream.chat(request)
    except (FerrymanError, TimeoutError) as exc:
        latency = (time.perf_counter() - started) * 1000
        message = exc.message if isinstance(exc, FerrymanError) else f"no answer within {TEST_TIMEOUT:g} s"
        for secret in secrets:  # an upstream may echo the key it refused
            message = message.replace(secret, "[credential]")
        status = exc.status if isinstance(exc, FerrymanError) else 504
        return DeploymentTestResult(
            deployment=label, ok=False, latency_ms=latency, error=message[:500], status=status
        )
    return DeploymentTestResult(deployment=label, ok=True, latency_ms=(time.perf_counter() - started) * 1000)


def _secrets_of(state: AppState, name: str) -> list[str]:
    """The credentials of `name`'s deployments as this replica holds them: to scrub from error texts."""
    return [
        d.api_key.get_secret_value()
        for route in _catalog(state).routes
        if route.name == name
        for d in route.deployments
        if d.api_key is not None and d.api_key.get_secret_value()
    ]


def _new_deployment(
    catalog: ModelCatalog, name: str, index: int, item: DeploymentBody, existing: StoredDeployment | None
) -> tuple[StoredDeployment, str | None]:
    """The stored form of one body item (merged over `existing`), and its credential in clear."""
    fields = item.model_fields_set - {"id", "api_key"}
    spec = dict(existing.spec) if existing is not None else {}
    dumped = item.model_dump(mode="json", include=fields)
    for field, value in dumped.items():
        if value is None:
            spec.pop(field, None)
        else:
            spec[field] = value
    for field in ("provider", "model"):
        if field not in spec:
            param = f"deployments[{index}].{field}"
            raise InvalidRequestError(f"{param}: Field required", param=param)
    deployment_id = existing.id if existing is not None else new_deployment_id()
    if "api_key" not in item.model_fields_set and existing is not None:
        return StoredDeployment(deployment_id, spec, existing.api_key_sealed, existing.api_key_hint), (
            _opened(catalog, name, existing)
        )
    if item.api_key is None:
        return StoredDeployment(deployment_id, spec), None
    secret = item.api_key.get_secret_value()
    if catalog.cipher is None:
        raise ConflictError(
            "Storing a credential needs an encryption key: set FERRYMAN_ENCRYPTION_KEY (or encryption.key) "
            "to 32 random bytes, base64 or hex, on every replica (docs/secrets.md)",
            param=f"deployments[{index}].api_key",
            code="encryption_key_not_configured",
        )
    sealed = catalog.cipher.encrypt(secret, credential_row(name, deployment_id))
    return StoredDeployment(deployment_id, spec, sealed, credential_hint(secret)), secret


def _opened(catalog: ModelCatalog, name: str, stored: StoredDeployment) -> str | None:
    if stored.api_key_sealed is None or catalog.cipher is None:
        return None
    return catalog.cipher.decrypt(stored.api_key_sealed, credential_row(name, stored.id))


def _validate(state: AppState, model: StoredModel, keys: list[str | None]) -> None:
    """The model as the config file would take it, or a 400 naming the field; fallbacks must exist."""
    deployments = [
        {**d.spec, **({"api_key": key} if key is not None else {})}
        for d, key in zip(model.deployments, keys, strict=True)
    ]
    try:
        ModelRoute.model_validate({**model.spec, "name": model.name, "deployments": deployments})
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"]).replace(".[", "[")
        raise InvalidRequestError(f"{param}: {error['msg']}", param=param) from None
    known = set(state.router.model_names)
    for i, fallback in enumerate(model.spec.get("fallbacks", [])):
        if fallback == model.name or fallback not in known:
            param = f"fallbacks[{i}]"
            raise InvalidRequestError(f"{param}: {fallback!r} is not another model", param=param)


async def _announce(state: AppState, catalog: ModelCatalog) -> None:
    """Serve the change here now, then tell the other replicas."""
    await catalog.reload()
    if state.keys is not None:
        await state.keys.announce_models_changed()


def _config_route(state: AppState, name: str) -> ModelRoute | None:
    return next((route for route in state.settings.models if route.name == name), None)


def _refuse_config(state: AppState, name: str) -> None:
    if _config_route(state, name) is not None:
        raise ConflictError(
            f"The model `{name}` is defined in the config file and is read-only here; change the file",
            param="name",
            code="model_read_only",
        )


async def _stored(state: AppState, name: str) -> StoredModel:
    model = await _catalog(state).store.get(name)
    if model is None:
        raise NotFoundError(f"The model `{name}` does not exist", param="name")
    return model


def _config_out(route: ModelRoute, state: AppState) -> RuntimeModelOut:
    return RuntimeModelOut(
        name=route.name,
        source="config",
        read_only=True,
        strategy=route.strategy,
        fallbacks=list(route.fallbacks),
        deployments=[_config_deployment(d) for d in route.deployments],
        settings=route.model_dump(
            mode="json", exclude={"name", "deployments", "strategy", "fallbacks"}, exclude_none=True
        ),
        served=route.name in state.router.model_names,
    )


def _config_deployment(deployment: Deployment) -> RuntimeDeploymentOut:
    key = deployment.api_key.get_secret_value() if deployment.api_key is not None else None
    return RuntimeDeploymentOut(
        id=None,
        name=deployment.label,
        provider=deployment.provider,
        model=deployment.model,
        api_base=deployment.api_base,
        weight=deployment.weight,
        priority=deployment.priority,
        api_key_hint=credential_hint(key) if key else None,
    )


def _runtime_out(model: StoredModel, state: AppState) -> RuntimeModelOut:
    settings = {k: v for k, v in model.spec.items() if k not in ("strategy", "fallbacks")}
    return RuntimeModelOut(
        name=model.name,
        source="runtime",
        read_only=False,
        strategy=str(model.spec.get("strategy", "weighted")),
        fallbacks=list(model.spec.get("fallbacks", [])),
        deployments=[_runtime_deployment(model.name, d) for d in model.deployments],
        settings=settings,
        created_at=model.created_at,
        updated_at=model.updated_at,
        served=model.name in state.router.model_names,
    )


def _runtime_deployment(name: str, stored: StoredDeployment) -> RuntimeDeploymentOut:
    spec = stored.spec
    return RuntimeDeploymentOut(
        id=stored.id,
        name=str(spec.get("name") or f"{name}/{spec['provider']}/{spec['model']}"),
        provider=str(spec["provider"]),
        model=str(spec["model"]),
        api_base=spec.get("api_base"),
        weight=int(spec.get("weight", 1)),
        priority=spec.get("priority"),
        api_key_hint=stored.api_key_hint,
    )


def add_model_routes(router: APIRouter) -> None:
    """Register `/models` on the admin router (under its master-key check)."""
    router.add_api_route("/models", list_models, methods=["GET"], response_model=RuntimeModelList)
    router.add_api_route(
        "/models", create_model, methods=["POST"], status_code=201, response_model=RuntimeModelOut
    )
    # `{name:path}`: model names often carry a slash (`openai/gpt-4o`); the test route comes first.
    router.add_api_route(
        "/models/{name:path}/test", test_model, methods=["POST"], response_model=ModelConnectionTest
    )
    router.add_api_route("/models/{name:path}", get_model, methods=["GET"], response_model=RuntimeModelOut)
    router.add_api_route(
        "/models/{name:path}", update_model, methods=["PATCH"], response_model=RuntimeModelOut
    )
    router.add_api_route("/models/{name:path}", delete_model, methods=["DELETE"], response_model=ModelDeleted)
