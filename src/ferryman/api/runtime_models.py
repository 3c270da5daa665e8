"""Keeping this replica's model set current: the config file's models plus the runtime ones in SQL.

A change made through the admin API is applied here at once, announced to the other replicas on the
key-invalidation channel (a `models` notice, `store/invalidation.py`), and caught by every replica's
poll of the catalog version too (every 0.5 s without Redis, every 5 s with it, for a notice lost while a
subscription was down). A reload builds a whole new router and pipeline (`api/app.py: build_routing`)
and swaps them in one step: requests in flight finish on the deployments they started on.

The config file wins: a runtime model named like a config-file model is ignored (and logged).
Credentials are decrypted here, into the deployments' settings in memory, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from pydantic import SecretStr, ValidationError

from ferryman.errors import FerrymanError
from ferryman.settings import ModelRoute, Settings
from ferryman.store.encryption import CredentialCipher
from ferryman.store.model_store import ModelStore, StoredModel, credential_row

log = logging.getLogger("ferryman.models")
POLL_SECONDS = 0.5  # without Redis: replicas sharing one database converge within a second
POLL_SECONDS_WITH_REDIS = 5.0  # notices arrive at once; the poll only covers a lost one

Rebuild = Callable[[Sequence[ModelRoute]], Awaitable[None]]


def cipher_for(settings: Settings) -> CredentialCipher | None:
    """The credential cipher `encryption:` configures; None without a key (credentials refused)."""
    encryption = settings.encryption
    if encryption.key is None:
        return None
    return CredentialCipher.from_texts(
        encryption.key.get_secret_value(), [k.get_secret_value() for k in encryption.previous_keys]
    )


def route_of(model: StoredModel, cipher: CredentialCipher | None) -> ModelRoute:
    """The stored model as the config file would have spelled it, credentials decrypted."""
    deployments = []
    for stored in model.deployments:
        spec = dict(stored.spec)
        if stored.api_key_sealed is not None:
            if cipher is None:
                raise FerrymanError(
                    f"model {model.name!r} has sealed credentials but no encryption key is configured"
                )
            spec["api_key"] = SecretStr(
                cipher.decrypt(stored.api_key_sealed, credential_row(model.name, stored.id))
            )
        spec.setdefault("name", f"{model.name}/{stored.spec['provider']}/{stored.spec['model']}")
        deployments.append(spec)
    return ModelRoute.model_validate({**model.spec, "name": model.name, "deployments": deployments})


async def reseal_credentials(store: ModelStore, cipher: CredentialCipher) -> int:
    """Rewrite every credential not sealed under the current key (decrypting with a previous one);
    how many were rewritten. After it, previous keys are no longer needed."""

    def reseal(row: str, sealed: str) -> str | None:
        if cipher.is_current(sealed):
            return None
        return cipher.encrypt(cipher.decrypt(sealed, row), row)

    changed = await store.reseal(reseal)
    if changed:
        log.info("re-encrypted %d stored credential(s) under key %s", changed, cipher.current_key_id)
    return changed


class ModelCatalog:
    """This replica's runtime models: loaded from `store`, rebuilt into the app on every change."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        rebuild: Rebuild,
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.cipher = cipher_for(settings)
        self._config = list(settings.models)
        self._config_names = {route.name for route in settings.models}
        self._rebuild = rebuild
        self._poll = poll_seconds
        self._version: int | None = None
        self._runtime: list[ModelRoute] = []
        self.routes: list[ModelRoute] = list(settings.models)  # what this replica serves: file + runtime
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def is_config_model(self, name: str) -> bool:
        """Whether `name` is a config-file model (read-only through the API)."""
        return name in self._config_names

    @property
    def runtime_names(self) -> list[str]:
        """The runtime models this replica serves."""
        return [route.name for route in self._runtime]

    async def start(self) -> None:
        """Load the runtime models now, then keep them current in the background."""
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="ferryman-model-catalog")

    def notice(self) -> None:
        """Another replica changed the models (a notice on the invalidation channel): reload soon."""
        self._wake.set()

    async def reload(self, *, force: bool = False) -> bool:
        """Rebuild from SQL if its version moved (or `force`); whether this replica's models changed."""
        async with self._lock:
            version = await self.store.version()
            if version == self._version and not force:
                return False
            stored = await self.store.list_models()
            self._runtime = self._routes(stored)
            routes = self.merged(self._runtime)
            await self._rebuild(routes)
            self.routes = routes
            self._version = version
            log.info(
                "model set now has %d runtime model(s) (catalog version %d)", len(self._runtime), version
            )
            return True

    def merged(self, runtime: Sequence[ModelRoute]) -> list[ModelRoute]:
        """The config file's models first, then the runtime ones; fallbacks to a model no longer in
        the set dropped (a deleted model must not break the ones that fell back to it)."""
        names = self._config_names | {route.name for route in runtime}
        fixed = [
            route
            if all(name in names for name in route.fallbacks)
            else route.model_copy(update={"fallbacks": [n for n in route.fallbacks if n in names]})
            for route in runtime
        ]
        return [*self._config, *fixed]

    async def aclose(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _routes(self, stored: Sequence[StoredModel]) -> list[ModelRoute]:
        routes = []
        for model in stored:
            if model.name in self._config_names:
                log.warning("runtime model %r ignored: the config file defines it", model.name)
                continue
            try:
                routes.append(route_of(model, self.cipher))
            except (FerrymanError, ValidationError) as exc:  # one bad row must not take the others down
                log.error("runtime model %r not served: %s", model.name, _reason(exc))
        return routes

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            self._wake.clear()
            try:
                await self.reload()
            except Exception as exc:  # a database blip must not end watching for the life of the process
                log.warning("runtime models not reloaded, retrying: %s", type(exc).__name__)


def _reason(exc: Exception) -> str:
    """A failure's reason without any value in it (pydantic's messages may quote the input)."""
    if isinstance(exc, ValidationError):
        return "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors())
    return str(exc)
