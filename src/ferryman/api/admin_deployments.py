"""`/admin/deployments`: every deployment's strategy figures and circuit, and a way to close a circuit.

This replica's view: in-flight counts and latencies are its own; circuits are its own too, kept in
step with the fleet's open ones through Redis when it is configured (`core/breaker.py`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from starlette.requests import Request

from ferryman.api.state import AppState
from ferryman.core.routing import Target
from ferryman.errors import NotFoundError

PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class CircuitOut(BaseModel):
    """A deployment's circuit breaker."""

    state: Literal["closed", "half_open", "open"]
    consecutive_failures: int
    window_requests: int = Field(description="Attempts counted in the current failure-ratio window.")
    window_failures: int
    retry_in_seconds: float | None = Field(description="While open: seconds until it is probed again.")
    times_opened: int = Field(description="Since start-up, on this replica.")


class DeploymentOut(BaseModel):
    """One deployment of one model."""

    model: str
    deployment: str
    provider: str
    strategy: str = Field(description="The model's routing strategy.")
    weight: int
    priority: int | None
    in_flight: int = Field(description="Attempts in flight on this replica.")
    latency_ms: float | None = Field(description="Moving average of time to first token (or response).")
    headroom: float = Field(description="Fraction of its RPM / TPM quota left, as last seen (1: no quota).")
    successes: int
    failures: int
    last_error: str | None
    circuit: CircuitOut


class DeploymentList(BaseModel):
    """Every deployment, model by model, in config order."""

    data: list[DeploymentOut]


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.ferryman
    return state


def deployment_out(state: AppState, model: str, target: Target) -> DeploymentOut:
    """One deployment as the admin API shows it."""
    router, health, name = state.router, state.deployment_health, target.deployment
    status, circuit = health.status(name), health.circuit(name)
    latency = router.load.latency.get(name)
    return DeploymentOut(
        model=model,
        deployment=name,
        provider=target.provider,
        strategy=router.strategy(model),
        weight=target.weight,
        priority=target.priority,
        in_flight=router.load.in_flight.get(name, 0),
        latency_ms=round(latency * 1000, 3) if latency is not None else None,
        headroom=round(router.headroom.headroom(name), 4),
        successes=status.successes,
        failures=status.failures,
        last_error=status.last_error,
        circuit=CircuitOut(
            state=circuit.state,
            consecutive_failures=circuit.consecutive_failures,
            window_requests=circuit.window_requests,
            window_failures=circuit.window_failures,
            retry_in_seconds=circuit.retry_in_seconds,
            times_opened=circuit.times_opened,
        ),
    )


async def list_deployments(request: Request) -> DeploymentList:
    """Every deployment with its strategy figures and circuit breaker state (this replica's view)."""
    state = _state(request)
    router = state.router
    return DeploymentList(
        data=[
            deployment_out(state, model, target)
            for model in router.model_names
            for target in router.targets(model)
        ]
    )


DeploymentName = Annotated[str, Path(min_length=1, max_length=400, pattern=PRINTABLE)]


async def reset_deployment(request: Request, name: DeploymentName) -> DeploymentList:
    """Close the deployment's circuit (on every replica, with Redis) and forget its failure counts:
    after an operator fixed the upstream, so it need not wait out the cooldown."""
    state = _state(request)
    if not _rows(state, name):
        raise NotFoundError(f"No deployment is called `{name}`.", code="deployment_not_found")
    state.deployment_health.breaker.reset(name)
    return DeploymentList(data=_rows(state, name))


def _rows(state: AppState, name: str) -> list[DeploymentOut]:
    router = state.router
    return [
        deployment_out(state, model, target)
        for model in router.model_names
        for target in router.targets(model)
        if target.deployment == name
    ]


def add_deployment_routes(router: APIRouter) -> None:
    """`GET /deployments` and `POST /deployments/{name}/reset` on the admin router."""
    router.add_api_route("/deployments", list_deployments, methods=["GET"], response_model=DeploymentList)
    router.add_api_route(
        "/deployments/{name:path}/reset",
        reset_deployment,
        methods=["POST"],
        response_model=DeploymentList,
    )
