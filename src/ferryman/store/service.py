"""The key store as the rest of the gateway sees it: resolve a presented key, and administer keys and teams.

`KeyService.open` wires the pieces a configuration asks for — static keys, the SQL repository, the grant
cache, Redis invalidation and the last-used recorder — and `aclose` releases them. Admin operations
publish an invalidation notice after they commit, so no replica keeps honouring a changed key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ferryman.errors import InvalidationNotDeliveredError, InvalidRequestError
from ferryman.settings import Settings
from ferryman.store._redis_connect import REDIS_FAILURES
from ferryman.store.cache import GrantCache
from ferryman.store.credentials import generate_key, hash_key
from ferryman.store.database import is_sqlite, open_engine, sqlite_path
from ferryman.store.invalidation import (
    ALL_KEYS,
    MODELS_CHANGED,
    InvalidationBus,
    InvalidationStatus,
    LocalInvalidation,
    RedisInvalidation,
)
from ferryman.store.last_used import LastUsedRecorder
from ferryman.store.migrate import ensure_schema
from ferryman.store.records import IssuedKey, KeyGrant, KeyRecord, KeySettings, TeamRecord
from ferryman.store.repository import KeyChange, KeyRepository, TeamChange
from ferryman.store.static_keys import static_grants

log = logging.getLogger("ferryman.store")
DEPENDENCY_CHECK_TIMEOUT = 2.0  # seconds; shorter than the readiness probe's period


@dataclass(frozen=True, slots=True)
class Lookup:
    """The answer to "whose key is this?": the grant, or `None` for a key nobody issued."""

    grant: KeyGrant | None


class KeyService:
    """Static and database keys behind one cached lookup, plus the admin operations on them."""

    def __init__(
        self,
        *,
        static: Mapping[str, KeyGrant],
        cache: GrantCache,
        bus: InvalidationBus,
        engine: AsyncEngine | None = None,
        recorder_interval: float = 60.0,
        database_keys_required: bool = True,
    ) -> None:
        self._static = static
        self._cache = cache
        self._bus = bus
        self.engine = engine
        self._repository = KeyRepository(engine) if engine is not None else None
        self._recorder = LastUsedRecorder(self._repository, recorder_interval) if self._repository else None
        self._database_keys_required = database_keys_required

    @classmethod
    async def open(cls, settings: Settings, *, listen: bool = True) -> KeyService:
        """Everything `settings` configures, after migrating (or, with `auto_migrate: false`, checking)
        the schema; `listen=False` (the CLI) publishes invalidation notices but hears none.

        With no `database_url` the store is the embedded SQLite database in `data_dir`, so keys work
        on one machine with nothing else installed."""
        url = settings.store_url
        database = sqlite_path(url) if is_sqlite(url) else None
        if database is not None:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = open_engine(url)
        await ensure_schema(url, auto_migrate=settings.auto_migrate, engine=engine)
        cache = GrantCache(ttl=settings.key_cache_ttl_seconds)
        bus: InvalidationBus = LocalInvalidation(cache)
        if settings.redis_url:
            bus = await RedisInvalidation.connect(settings.redis_url, cache, listen=listen)
        service = cls(
            static=static_grants(settings.keys),
            cache=cache,
            bus=bus,
            engine=engine,
            database_keys_required=settings.database_url is not None,
        )
        if service._recorder is not None and listen:
            service._recorder.start()
        return service

    @property
    def enforces_keys(self) -> bool:
        """Whether a key is required on every request: config keys exist, or a database was configured.

        The embedded database alone does not require one: `make run` with no master key stays open for a
        first offline try (and with no master key, no admin can issue keys into it anyway)."""
        return bool(self._static) or (self._repository is not None and self._database_keys_required)

    @property
    def cache(self) -> GrantCache:
        """The grant cache (exposed for tests and operators' introspection)."""
        return self._cache

    async def resolve(self, secret: str) -> Lookup:
        """Find the grant for a presented key: cache first, then config, then one SQL query.

        StoreUnavailableError (503) when the key is in neither the cache nor the config and the database
        cannot answer: the key can be neither accepted nor refused.
        """
        digest = hash_key(secret)
        hit = self._cache.get(digest)
        if hit is not None:
            grant = hit.grant
        else:
            generation = self._cache.generation
            grant = self._static.get(digest)
            if grant is None and self._repository is not None:
                grant = await self._repository.grant_for_hash(digest)
            self._cache.put(digest, grant, generation)
        if grant is None or not hmac.compare_digest(grant.key_hash, digest):
            return Lookup(None)
        return Lookup(grant)

    def note_use(self, grant: KeyGrant) -> None:
        """Count a successful use towards `last_used_at` (batched; never a write per request)."""
        if self._recorder is not None and not grant.key_id.startswith("static:"):
            self._recorder.note(grant.key_id)

    @property
    def repository(self) -> KeyRepository:
        """The SQL repository, or a clear 400 when no database is configured."""
        if self._repository is None:
            error = InvalidRequestError(
                "Virtual keys and teams need a database: set database_url in the config.",
                code="database_not_configured",
            )
            error.status = 501
            raise error
        return self._repository

    async def create_key(self, settings: KeySettings) -> IssuedKey:
        """Issue a new key; its secret is in the result and nowhere else."""
        secret = generate_key()
        return IssuedKey(secret, await self.repository.create_key(settings, secret))

    async def update_key(self, key_id: str, change: KeyChange) -> KeyRecord:
        """Change a key's settings; every replica forgets its cached grant."""
        record, digest = await self.repository.update_key(key_id, change)
        await self._announce(digest, record)
        return record

    async def rotate_key(self, key_id: str) -> IssuedKey:
        """A new secret for the same key; the old secret stops working on every replica."""
        secret = generate_key()
        record, old_digest = await self.repository.rotate_key(key_id, secret)
        issued = IssuedKey(secret, record)
        await self._announce(old_digest, issued)
        return issued

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke a key for good, everywhere."""
        record, digest = await self.repository.revoke_key(key_id)
        await self._announce(digest, record)
        return record

    async def update_team(self, team_id: str, change: TeamChange) -> TeamRecord:
        """Change a team; cached grants of its keys are dropped everywhere."""
        record = await self.repository.update_team(team_id, change)
        await self._announce(ALL_KEYS, record)
        return record

    async def delete_team(self, team_id: str) -> TeamRecord:
        """Delete a team; its keys stop working everywhere."""
        record = await self.repository.delete_team(team_id)
        await self._announce(ALL_KEYS, record)
        return record

    def on_models_changed(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a replica announces that the runtime models changed."""
        self._bus.model_listeners.append(listener)

    async def announce_models_changed(self) -> None:
        """Tell every replica the runtime models changed; undelivered is only logged (and kept for
        `/health`): each replica also polls the catalog version, so it catches up within seconds."""
        with contextlib.suppress(InvalidationNotDeliveredError):
            await self._bus.publish(MODELS_CHANGED)

    @property
    def uses_redis(self) -> bool:
        """Whether notices travel through Redis (else replicas learn of changes by polling)."""
        return isinstance(self._bus, RedisInvalidation)

    @property
    def invalidation(self) -> InvalidationStatus:
        """Whether changes made here are reaching the other replicas (for `/health`)."""
        return self._bus.status

    async def _announce(self, notice: str, saved: object) -> None:
        """Publish `notice` for a change already committed; if it cannot be delivered, the error carries
        the committed result, so the caller still gets it (a rotated key's secret exists nowhere else)."""
        try:
            await self._bus.publish(notice)
        except InvalidationNotDeliveredError as exc:
            raise InvalidationNotDeliveredError(exc.message, saved=saved) from exc

    async def check_dependencies(self) -> dict[str, bool]:
        """Whether each configured dependency (`database`, `redis`) answers within two seconds.

        When Redis answers again after a notice was given up on, every replica is told to drop its whole
        cache, so the change that was not announced takes effect now rather than at the cache TTL.
        """
        results: dict[str, bool] = {}
        if self.engine is not None:
            results["database"] = await _answers(self._ping_database())
        if isinstance(self._bus, RedisInvalidation):
            results["redis"] = await _answers(self._bus.ping())
            if results["redis"] and self._bus.status.degraded:
                with contextlib.suppress(InvalidationNotDeliveredError):  # logged; stays degraded
                    await self._bus.publish(ALL_KEYS)
        return results

    async def _ping_database(self) -> None:
        assert self.engine is not None  # noqa: S101 - only called when a database is configured
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def flush_last_used(self) -> None:
        """Write pending last-used timestamps now (shutdown, tests)."""
        if self._recorder is not None:
            await self._recorder.flush()

    async def aclose(self) -> None:
        """Flush, stop listening, close connections."""
        if self._recorder is not None:
            await self._recorder.aclose()
        await self._bus.aclose()
        if self.engine is not None:
            await self.engine.dispose()


_UNANSWERED: tuple[type[Exception], ...] = (SQLAlchemyError, *REDIS_FAILURES)  # timeouts are OSErrors


async def _answers(check: Awaitable[None]) -> bool:
    """True when `check` completes in time; any failure to answer is False, and logged."""
    try:
        async with asyncio.timeout(DEPENDENCY_CHECK_TIMEOUT):
            await check
    except _UNANSWERED as exc:
        log.warning("dependency check failed: %s", type(exc).__name__)
        return False
    return True
