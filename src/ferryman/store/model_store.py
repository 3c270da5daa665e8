"""Runtime models in SQL: the admin API's models and deployments, and the catalog version replicas poll.

A model is one `runtime_models` row (its settings as JSON, as the config file spells them) and its
deployments are `runtime_deployments` rows in order, each with its credential sealed by the caller
(`store.encryption`): this module never sees a credential in clear. Every write bumps
`runtime_catalog.version` in the same transaction, so a replica that reads a new version knows its
model set is stale, whichever replica (or CLI) made the change.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ferryman.errors import ConflictError, NotFoundError, StoreUnavailableError
from ferryman.store.records import utc_now
from ferryman.store.tables import RuntimeCatalogRow, RuntimeDeploymentRow, RuntimeModelRow

CATALOG_ROW = 1


def new_deployment_id() -> str:
    """A fresh deployment id: also the row identity its sealed credential is bound to."""
    return "dep_" + secrets.token_hex(8)


def credential_row(model: str, deployment_id: str) -> str:
    """The associated data a deployment's credential is sealed with: the row it belongs to."""
    return f"runtime_deployments/{model}/{deployment_id}"


@dataclass(frozen=True, slots=True)
class StoredDeployment:
    """One deployment as stored: its settings (no credential) and its sealed credential, if any."""

    id: str
    spec: dict[str, Any]
    api_key_sealed: str | None = None
    api_key_hint: str | None = None
    updated_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True, slots=True)
class StoredModel:
    """One runtime model as stored."""

    name: str
    spec: dict[str, Any]
    deployments: tuple[StoredDeployment, ...]
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)


class ModelStore:
    """CRUD of runtime models on the key store's engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def version(self) -> int:
        """The catalog version: changes whenever any runtime model does."""
        async with self._session() as session:
            value = await session.scalar(
                select(RuntimeCatalogRow.version).where(RuntimeCatalogRow.id == CATALOG_ROW)
            )
            return int(value or 0)

    async def list_models(self) -> list[StoredModel]:
        """Every runtime model, by name, with its deployments in order."""
        async with self._session() as session:
            models = (await session.scalars(select(RuntimeModelRow).order_by(RuntimeModelRow.name))).all()
            rows = (
                await session.scalars(
                    select(RuntimeDeploymentRow).order_by(
                        RuntimeDeploymentRow.model_name, RuntimeDeploymentRow.position
                    )
                )
            ).all()
        by_model: dict[str, list[StoredDeployment]] = {}
        for row in rows:
            by_model.setdefault(row.model_name, []).append(_deployment(row))
        return [_model(row, by_model.get(row.name, [])) for row in models]

    async def get(self, name: str) -> StoredModel | None:
        """One runtime model, or None."""
        async with self._session() as session:
            row = await session.get(RuntimeModelRow, name)
            if row is None:
                return None
            rows = await self._deployment_rows(session, name)
        return _model(row, [_deployment(r) for r in rows])

    async def create(self, model: StoredModel) -> StoredModel:
        """Insert a model and its deployments; ConflictError when the name is taken."""
        now = utc_now()
        try:
            async with self._session() as session, session.begin():
                session.add(RuntimeModelRow(name=model.name, spec=model.spec, created_at=now, updated_at=now))
                await session.flush()
                self._add_deployments(session, model.name, model.deployments, now)
                await _bump(session)
        except IntegrityError:
            raise ConflictError(f"A model named `{model.name}` exists already", param="name") from None
        return StoredModel(model.name, model.spec, model.deployments, now, now)

    async def replace(self, model: StoredModel) -> StoredModel:
        """Store `model` over the one of its name (settings and the whole deployment list)."""
        now = utc_now()
        async with self._session() as session, session.begin():
            row = await session.get(RuntimeModelRow, model.name, with_for_update=True)
            if row is None:
                raise _not_found(model.name)
            row.spec, row.updated_at = model.spec, now
            await session.execute(
                delete(RuntimeDeploymentRow).where(RuntimeDeploymentRow.model_name == model.name)
            )
            self._add_deployments(session, model.name, model.deployments, now)
            await _bump(session)
            created = row.created_at
        return StoredModel(model.name, model.spec, model.deployments, created, now)

    async def delete(self, name: str) -> None:
        """Remove a model and its deployments; NotFoundError when there is none."""
        async with self._session() as session, session.begin():
            await session.execute(delete(RuntimeDeploymentRow).where(RuntimeDeploymentRow.model_name == name))
            result = await session.execute(delete(RuntimeModelRow).where(RuntimeModelRow.name == name))
            if not getattr(result, "rowcount", 0):
                raise _not_found(name)
            await _bump(session)

    async def reseal(self, reseal: Callable[[str, str], str | None]) -> int:
        """Rewrite credentials `reseal(row, sealed)` returns a new token for (None: already current);
        how many rows changed. One transaction: a failure leaves every row as it was."""
        changed = 0
        async with self._session() as session, session.begin():
            rows = (
                await session.scalars(
                    select(RuntimeDeploymentRow)
                    .where(RuntimeDeploymentRow.api_key_sealed.is_not(None))
                    .with_for_update()
                )
            ).all()
            for row in rows:
                assert row.api_key_sealed is not None  # noqa: S101 - selected for it
                token = reseal(credential_row(row.model_name, row.id), row.api_key_sealed)
                if token is not None:
                    row.api_key_sealed = token
                    changed += 1
            if changed:
                await _bump(session)
        return changed

    def _add_deployments(
        self, session: AsyncSession, name: str, deployments: Sequence[StoredDeployment], now: datetime
    ) -> None:
        for position, deployment in enumerate(deployments):
            session.add(
                RuntimeDeploymentRow(
                    id=deployment.id,
                    model_name=name,
                    position=position,
                    spec=deployment.spec,
                    api_key_sealed=deployment.api_key_sealed,
                    api_key_hint=deployment.api_key_hint,
                    created_at=now,
                    updated_at=deployment.updated_at,
                )
            )

    async def _deployment_rows(self, session: AsyncSession, name: str) -> Sequence[RuntimeDeploymentRow]:
        query = (
            select(RuntimeDeploymentRow)
            .where(RuntimeDeploymentRow.model_name == name)
            .order_by(RuntimeDeploymentRow.position)
        )
        return (await session.scalars(query)).all()

    def _session(self) -> _GuardedSession:
        return _GuardedSession(self._sessions)


class _GuardedSession:
    """A session whose driver errors become StoreUnavailableError (503), as the key store's do."""

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self._session = factory()

    async def __aenter__(self) -> AsyncSession:
        return self._session

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await self._session.close()
        if isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError):
            raise StoreUnavailableError(
                f"the model store's database did not answer: {type(exc).__name__}"
            ) from exc


async def _bump(session: AsyncSession) -> None:
    await session.execute(
        update(RuntimeCatalogRow)
        .where(RuntimeCatalogRow.id == CATALOG_ROW)
        .values(version=RuntimeCatalogRow.version + 1)
    )


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"The model `{name}` does not exist", param="name")


def _deployment(row: RuntimeDeploymentRow) -> StoredDeployment:
    return StoredDeployment(row.id, dict(row.spec), row.api_key_sealed, row.api_key_hint, row.updated_at)


def _model(row: RuntimeModelRow, deployments: list[StoredDeployment]) -> StoredModel:
    return StoredModel(row.name, dict(row.spec), tuple(deployments), row.created_at, row.updated_at)
