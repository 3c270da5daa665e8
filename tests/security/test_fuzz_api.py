"""Every operation of the gateway's own OpenAPI document, fuzzed with schemathesis: never a 5xx.

`tests/api/test_openapi.py` fuzzes chat completions in depth; this sweeps the whole surface — inference
in each format, the usage report, health, and the admin API with the master key — with bounded,
derandomized examples (the same cases every run), so a route added without validation fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import RunningGateway, serve_gateway

MASTER = "sk-fuzz-master-0123456789abcdef"
EXAMPLES = 4  # per operation and mode: the sweep is about breadth (every operation, both modes, the same
# derandomized cases each run); depth is in test_openapi.py. Generating the large request schemas is what
# costs: 8 took ~50 s for the two modes.
# Operations whose answer is a stream or a scrape: fuzzed elsewhere or with nothing to validate here.
SKIPPED = {("/metrics", "GET")}


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    """The embedded example (fake provider, SQLite in memory) with a master key, so the admin API is open
    to the fuzzer as it is to an operator."""
    example = yaml.safe_load(resources.files("ferryman").joinpath("example.yaml").read_text())
    with serve_gateway({**example, "master_key": MASTER}) as running:
        yield running


@pytest.fixture(scope="module")
def document(gateway: RunningGateway) -> dict[str, Any]:
    served = httpx.get(gateway.url + "/openapi.json", timeout=10).json()
    assert isinstance(served, dict)
    # A valid `timeout` shorter than the answer takes is a 504 by design (tests/api/test_resilience.py),
    # and on a busy machine even 0.01 s can be: the fuzzer's timeouts are ones any machine can meet.
    for schema in served["components"]["schemas"].values():
        timeout = schema.get("properties", {}).get("timeout")
        if isinstance(timeout, dict) and timeout.get("type") == "number":
            timeout["minimum"] = 5
    return served


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"} and (path, method.upper()) not in SKIPPED
    ]


def fuzz(url: str, schema: Any, path: str, method: str, mode: GenerationMode) -> list[int]:
    """Send derandomized cases for one operation with the master key; fail on the first 5xx."""
    operation = schema[path][method]
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: schemathesis.Case[Any]) -> None:
        headers = {**(case.headers or {}), "authorization": f"Bearer {MASTER}"}
        response = case.call(base_url=url, headers=headers, timeout=15)
        statuses.append(response.status_code)
        assert response.status_code < 500, (
            f"{method} {path} answered {response.status_code}: {response.text[:300]}\n"
            f"reproduce with: {case.as_curl_command(headers=headers)}"
        )

    try:
        send()
    except Unsatisfiable:
        # Nothing about the operation can be malformed (a GET without parameters): no invalid case.
        assert mode is GenerationMode.NEGATIVE, f"{method} {path}: no valid case could be generated"
    return statuses


def test_the_document_lists_the_admin_and_inference_operations(document: dict[str, Any]) -> None:
    listed = operations(document)
    assert ("/v1/chat/completions", "POST") in listed and ("/admin/keys", "POST") in listed
    assert len(listed) >= 20


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_operation_answers_a_5xx_to_any_input(
    gateway: RunningGateway, document: dict[str, Any], mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_dict(copy.deepcopy(document))
    seen: dict[tuple[str, str], list[int]] = {}
    for path, method in operations(document):
        seen[path, method] = fuzz(gateway.url, schema, path, method, mode)
    if mode is GenerationMode.POSITIVE:
        assert all(seen.values()), [operation for operation, statuses in seen.items() if not statuses]
    else:
        # Invalid input is refused: no operation took every malformed case as valid.
        accepting = [op for op, statuses in seen.items() if statuses and all(s < 300 for s in statuses)]
        assert len(accepting) < len(seen) / 2, accepting
