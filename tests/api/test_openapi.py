"""The OpenAPI document: complete (every route, hot path included), valid, true to real responses, and fuzzed."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from ferryman.api.app import GatewayApp, create_app
from ferryman.settings import load_settings
from tests.conftest import RunningGateway, serve_gateway

HOT_PATH = {
    ("/v1/chat/completions", "post"),
    ("/v1/embeddings", "post"),
    ("/v1/models", "get"),
    ("/v1/messages", "post"),
    ("/v1beta/models/{model}:generateContent", "post"),
    ("/v1beta/models/{model}:streamGenerateContent", "post"),
    ("/health", "get"),
    ("/health/live", "get"),
    ("/health/ready", "get"),
    ("/metrics", "get"),
}
STREAMING = ("/v1/chat/completions", "/v1/messages", "/v1beta/models/{model}:streamGenerateContent")
ERROR_STATUSES = ("400", "401", "403", "404", "413", "429", "502", "504")
SCHEMA_URI = "urn:ferryman:openapi"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    """The embedded example (fake provider, no key), as `ferryman serve` runs it with no --config."""
    example = yaml.safe_load(resources.files("ferryman").joinpath("example.yaml").read_text())
    with serve_gateway(example) as running:
        yield running


@pytest.fixture(scope="module")
def served(gateway: RunningGateway) -> dict[str, Any]:
    response = httpx.get(gateway.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    return dict(response.json())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryman.cli", "openapi", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def registered_routes(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) for every route the app serves, routers and the mounted admin app included,
    docs and HEAD left out."""
    admin = app.admin if isinstance(app, GatewayApp) else app
    assert isinstance(admin, fastapi.FastAPI)
    docs = {admin.openapi_url, admin.docs_url, admin.redoc_url, admin.swagger_ui_oauth2_redirect_url}
    # Recent FastAPI wraps included routers; iter_route_contexts flattens them (older: plain routes).
    flatten = getattr(fastapi.routing, "iter_route_contexts", list)
    found: set[tuple[str, str]] = set()
    routes = list(app.routes)
    if admin is not app:
        # the routes that hand requests to the admin app are stand-ins for the admin app's own routes
        routes = [r for r in routes if getattr(r, "endpoint", None) is not admin] + list(admin.routes)
    for route in flatten(routes):
        path = str(getattr(route, "path_format", None) or getattr(route, "path", ""))
        mount = getattr(route, "original_route", route)
        if isinstance(mount, Mount):  # a mounted app or static files: its prefix must be documented
            found.add((mount.path, "*"))
        elif path not in docs:
            found |= {
                (path, method.lower()) for method in getattr(route, "methods", None) or () if method != "HEAD"
            }
    return found


def validator_for(document: dict[str, Any], schema_name: str) -> Any:
    """A JSON Schema validator for one component schema, its `$ref`s resolved within `document`."""
    registry: Registry[Any] = Registry().with_resource(
        SCHEMA_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return OAS31Validator({"$ref": f"{SCHEMA_URI}#/components/schemas/{schema_name}"}, registry=registry)


def assert_matches(document: dict[str, Any], schema_name: str, body: object) -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in validator_for(document, schema_name).iter_errors(body)
    ]
    assert not errors, f"{schema_name}: {errors}"


# --- Completeness -------------------------------------------------------------------------------------


def test_served_schema_is_valid_openapi_3_1(served: dict[str, Any]) -> None:
    assert served["openapi"].startswith("3.1.")
    validate(served)  # raises on any structural error or unresolvable $ref


def test_every_hot_path_route_is_documented_with_its_methods(served: dict[str, Any]) -> None:
    documented = {(path, method) for path, item in served["paths"].items() for method in item}
    assert not HOT_PATH - documented, f"undocumented: {sorted(HOT_PATH - documented)}"


def undocumented_routes(app: GatewayApp) -> set[tuple[str, str]]:
    """Registered routes the app's own schema does not describe (a mount counts if a path is under it)."""
    paths = app.openapi()["paths"]
    documented = {(path, method) for path, item in paths.items() for method in item}
    return {
        (path, method)
        for path, method in registered_routes(app)
        if (path, method) not in documented
        and not (method == "*" and any(p.startswith(path.rstrip("/") + "/") for p in paths))
    }


def test_every_registered_route_appears_in_the_schema(gateway: RunningGateway) -> None:
    app = gateway.server.config.app
    assert isinstance(app, GatewayApp)
    assert HOT_PATH <= registered_routes(app)  # the flattening sees Starlette routes...
    assert any(path.startswith("/admin/") for path, _ in registered_routes(app))  # ...and included routers
    assert not undocumented_routes(app), f"routes missing from the OpenAPI schema: {undocumented_routes(app)}"


def test_a_new_undocumented_route_is_caught() -> None:
    app = create_app(load_settings(None))
    app.router.routes.append(Route("/v1/secret", lambda request: None, methods=["POST"]))
    app.router.routes.append(Mount("/ui", routes=[]))
    assert undocumented_routes(app) == {("/v1/secret", "post"), ("/ui", "*")}


def test_sdk_prefix_aliases_are_documented_as_the_same_operation(served: dict[str, Any]) -> None:
    for alias, original in [
        ("/chat/completions", "/v1/chat/completions"),
        ("/v1/models/{model}:streamGenerateContent", "/v1beta/models/{model}:streamGenerateContent"),
    ]:
        (method,) = served["paths"][alias]
        copy_, source = served["paths"][alias][method], served["paths"][original][method]
        assert copy_["requestBody"] == source["requestBody"]
        assert copy_["responses"] == source["responses"]
        assert copy_["operationId"] != source["operationId"]


def test_errors_are_documented_openai_shaped_with_request_id(served: dict[str, Any]) -> None:
    operation = served["paths"]["/v1/chat/completions"]["post"]
    responses = served["components"]["responses"]
    for status in ERROR_STATUSES:
        response = responses[operation["responses"][status]["$ref"].rsplit("/", 1)[1]]
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert "x-request-id" in response["headers"]
    assert "retry-after" in responses["TooManyRequests"]["headers"]
    error = served["components"]["schemas"]["ErrorObject"]
    assert set(error["required"]) == {"message", "type", "param", "code"}


def test_streams_and_security_schemes_are_documented(served: dict[str, Any]) -> None:
    for path in STREAMING:
        assert "text/event-stream" in served["paths"][path]["post"]["responses"]["200"]["content"]
    schemes = served["components"]["securitySchemes"]
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    assert {(s.get("in"), s.get("name")) for s in schemes.values()} >= {
        ("header", "x-api-key"),
        ("header", "x-goog-api-key"),
        ("query", "key"),
    }
    assert {name for requirement in served["security"] for name in requirement} == set(schemes)
    assert served["paths"]["/health/ready"]["get"]["security"] == []  # probes need no key


def test_admin_validation_errors_are_documented_as_400_not_422(served: dict[str, Any]) -> None:
    create_key = served["paths"]["/admin/keys"]["post"]["responses"]
    assert "400" in create_key
    assert "422" not in create_key


def test_cli_prints_the_served_schema(served: dict[str, Any]) -> None:
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == served


def test_cli_writes_the_schema_for_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "ferryman.yaml"
    config.write_text("models:\n  - name: m\n    deployments:\n      - {provider: fake, model: fake-model}\n")
    output = tmp_path / "openapi.json"
    result = run_cli("--config", str(config), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    document = json.loads(output.read_text())
    validate(document)
    assert "/v1/messages" in document["paths"]


def test_cli_reports_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("server: {port: -1}\n")
    result = run_cli("--config", str(config))
    assert result.returncode == 1
    assert "server.port" in result.stderr


# --- The schemas describe what the gateway really sends -----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "schema"),
    [
        ("/v1/chat/completions", {"model": "fake-model", "messages": HELLO}, "ChatCompletion"),
        ("/v1/embeddings", {"model": "fake-embedding", "input": ["a", "b"]}, "EmbeddingList"),
        ("/v1/messages", {"model": "fake-model", "max_tokens": 16, "messages": HELLO}, "Message"),
        (
            "/v1beta/models/fake-model:generateContent",
            {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]},
            "GenerateContentResponse",
        ),
        ("/v1/chat/completions", {"model": "nope", "messages": HELLO}, "Error"),
        ("/v1/messages", {"model": "fake-model", "messages": HELLO}, "Error"),
    ],
)
def test_real_responses_match_their_documented_schema(
    gateway: RunningGateway, served: dict[str, Any], path: str, body: dict[str, Any], schema: str
) -> None:
    response = httpx.post(gateway.url + path, json=body, timeout=10)
    assert (response.status_code == 200) == (schema != "Error"), response.text
    assert response.headers["x-request-id"]
    request_schema = served["paths"][path.replace("fake-model", "{model}")]["post"]["requestBody"]
    if schema != "Error":  # the documented request schema accepts what the gateway accepts
        name = request_schema["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert_matches(served, name, body)
    assert_matches(served, schema, response.json())


@pytest.mark.parametrize(
    ("path", "schema"), [("/v1/models", "ModelList"), ("/health", "Health"), ("/health/ready", "Status")]
)
def test_real_get_responses_match_their_documented_schema(
    gateway: RunningGateway, served: dict[str, Any], path: str, schema: str
) -> None:
    response = httpx.get(gateway.url + path, timeout=10)
    assert response.status_code == 200
    assert_matches(served, schema, response.json())


def test_a_stream_is_served_as_documented(gateway: RunningGateway, served: dict[str, Any]) -> None:
    body = {"model": "fake-model", "messages": HELLO, "stream": True}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(
    ("path", "schema", "body"),
    [
        ("/v1/chat/completions", "ChatCompletionRequest", {"model": "fake-model", "messages": []}),
        (
            "/v1/chat/completions",
            "ChatCompletionRequest",
            {"model": "fake-model", "messages": [{"role": "tool", "content": "x"}]},
        ),
        ("/v1/messages", "MessageRequest", {"model": "fake-model", "messages": HELLO}),
        ("/v1beta/models/fake-model:generateContent", "GenerateContentRequest", {"contents": []}),
        ("/v1/embeddings", "EmbeddingRequest", {"model": "fake-embedding"}),
    ],
)
def test_request_schemas_reject_what_the_gateway_rejects(
    gateway: RunningGateway, served: dict[str, Any], path: str, schema: str, body: dict[str, Any]
) -> None:
    assert not validator_for(served, schema).is_valid(body)
    assert httpx.post(gateway.url + path, json=body, timeout=10).status_code == 400


# --- Fuzzing ------------------------------------------------------------------------------------------


def fuzz_chat_completions(
    url: str, document: dict[str, Any], mode: GenerationMode, examples: int
) -> list[int]:
    """Send `examples` schemathesis cases; fail on the first 5xx; return every status seen."""
    operation = schemathesis.openapi.from_dict(document)["/v1/chat/completions"]["POST"]
    statuses: list[int] = []

    # Derandomized and without shrinking: the same cases every run, in bounded time.
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=url, timeout=10)
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    return statuses


def test_fuzzed_valid_chat_completions_are_served_never_a_5xx(
    gateway: RunningGateway, served: dict[str, Any]
) -> None:
    """Bodies valid by the schema, for a model the example serves: answered (or refused with a 4xx)."""
    document = copy.deepcopy(served)
    properties = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    properties["model"] = {"const": "fake-model"}
    # A valid timeout shorter than the answer takes is a 504 by design (tests/api/test_resilience.py),
    # and on a busy machine even 0.01 s can be: these bodies get a timeout any machine can meet.
    properties["timeout"] = {**properties["timeout"], "minimum": 5}
    properties["fallbacks"] = {**properties["fallbacks"], "items": {"const": "fake-model"}}  # served ones
    statuses = fuzz_chat_completions(gateway.url, document, GenerationMode.POSITIVE, examples=40)
    assert len(statuses) == 40
    assert max(statuses) < 500
    assert statuses.count(200) >= 30  # the schema is precise enough that valid bodies are served


def test_fuzzed_invalid_chat_completions_get_a_4xx_never_a_5xx(
    gateway: RunningGateway, served: dict[str, Any]
) -> None:
    statuses = fuzz_chat_completions(gateway.url, served, GenerationMode.NEGATIVE, examples=20)
    assert statuses
    assert all(400 <= status < 500 for status in statuses), statuses
