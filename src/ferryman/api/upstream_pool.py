"""Every deployment's upstream client, kept across model-set rebuilds, and the routing target it becomes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from opentelemetry.trace import Tracer

from ferryman.core.pricing import Price, price_for
from ferryman.core.routing import Target
from ferryman.core.upstream import Upstream
from ferryman.providers import create_provider
from ferryman.settings import Deployment, Settings

RETIRED_UPSTREAM_GRACE = 900.0  # seconds a replaced deployment's client stays open for its requests


class UpstreamPool:
    """Every upstream client, by deployment: a rebuilt model set keeps the clients (and their pooled
    connections) of the deployments it still has, and retires the others once requests had time to end.

    A config-file deployment is known by identity (its `SecretValue` key rotates in place); a runtime
    one by content, credential included, so a changed deployment gets a fresh client.
    """

    def __init__(self, settings: Settings, tracer: Tracer | None) -> None:
        self._settings = settings
        self._tracer = tracer
        self._config = {id(d) for route in settings.models for d in route.deployments}
        self._clients: dict[str, Upstream] = {}
        self._retired: list[tuple[float, Upstream]] = []

    def get(self, deployment: Deployment) -> Upstream:
        """The client of `deployment`, created on first use."""
        key = self._key(deployment)
        upstream = self._clients.get(key)
        if upstream is None:
            if deployment.ca_bundle is None and self._settings.upstream_ca_bundle is not None:
                deployment = deployment.model_copy(update={"ca_bundle": self._settings.upstream_ca_bundle})
            upstream = create_provider(deployment, propagate_trace=self._tracer is not None)
            self._clients[key] = upstream
        return upstream

    def keep_only(self, deployments: Sequence[Deployment]) -> None:
        """Retire the clients of deployments not in `deployments` (closed by `close_retired`)."""
        keep = {self._key(d) for d in deployments}
        for key in [key for key in self._clients if key not in keep]:
            self._retired.append((time.monotonic(), self._clients.pop(key)))

    @property
    def clients(self) -> list[Upstream]:
        """The clients in use."""
        return list(self._clients.values())

    async def close_retired(self, older_than: float = RETIRED_UPSTREAM_GRACE) -> None:
        """Close retired clients once `older_than` seconds passed: requests they started have ended."""
        now, waiting = time.monotonic(), []
        for retired_at, upstream in self._retired:
            if now - retired_at >= older_than:
                await upstream.aclose()
            else:
                waiting.append((retired_at, upstream))
        self._retired = waiting

    async def aclose(self) -> None:
        """Close every client, in use or retired."""
        await self.close_retired(older_than=0)
        for upstream in self._clients.values():
            await upstream.aclose()
        self._clients.clear()

    def _key(self, deployment: Deployment) -> str:
        if id(deployment) in self._config:
            return f"config:{id(deployment)}"
        secret = deployment.api_key.get_secret_value() if deployment.api_key else ""
        content = deployment.model_dump_json() + "\x00" + secret
        return "runtime:" + hashlib.sha256(content.encode()).hexdigest()


def target(upstream: Upstream, deployment: Deployment) -> Target:
    """`deployment` as the router sees it: its client, its label, and its price (the pinned price of
    its model, or the config's override)."""
    price = pinned = price_for(deployment.model)
    override = deployment.price
    if override is not None:
        # an override changes the rates, not the model: unless it says otherwise, the limit stays pinned
        limit = override.max_output_tokens or (pinned.max_output_tokens if pinned else None)
        price = Price(
            override.input_per_mtok,
            override.output_per_mtok,
            cached_input=override.cached_input_per_mtok,
            cache_write=override.cache_write_per_mtok,
            max_output_tokens=limit,
        )
    return Target(
        upstream=upstream,
        provider=deployment.provider,
        deployment=deployment.label,
        upstream_model=deployment.model,
        price=price,
        weight=deployment.weight,
        priority=deployment.priority,
    )
