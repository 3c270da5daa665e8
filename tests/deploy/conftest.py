"""Rendered deployment manifests, built once per session (each render runs kubectl or helm)."""

from __future__ import annotations

import pytest

from tests.deploy._manifests import Rendered, helm_template, kustomize


@pytest.fixture(scope="session")
def base() -> Rendered:
    """deploy/k8s/base, rendered."""
    return Rendered(kustomize("base"))


@pytest.fixture(scope="session")
def staging() -> Rendered:
    """The staging overlay, rendered."""
    return Rendered(kustomize("staging"))


@pytest.fixture(scope="session")
def production() -> Rendered:
    """The production overlay, rendered."""
    return Rendered(kustomize("production"))


@pytest.fixture(scope="session")
def blue_green() -> Rendered:
    """The blue-green overlay, rendered."""
    return Rendered(kustomize("blue-green"))


@pytest.fixture(scope="session")
def helm_defaults() -> Rendered:
    """The Helm chart with its default values."""
    return Rendered(helm_template())


@pytest.fixture(scope="session")
def helm_monitored() -> Rendered:
    """The Helm chart with the Prometheus Operator resources switched on."""
    return Rendered(
        helm_template("metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true")
    )
