"""The documentation's examples work: the Python snippets of the README and of docs/api.md run against
the embedded example config, and print what their calls return."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ferryman.settings import load_settings
from tests.conftest import RunningGateway

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCUMENTS_WITH_SNIPPETS = ("README.md", "docs/api.md")
SDK_IMPORTS = {
    "from openai import": "openai",
    "import anthropic": "anthropic",
    "from google import genai": "genai",
}


def python_snippets(markdown: str) -> list[str]:
    """The body of every ```python block, in order."""
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def snippet_id(document: str, number: int, snippet: str) -> str:
    """`README.md-1-openai`: where the snippet is, and which SDK it uses."""
    sdk = next((name for marker, name in SDK_IMPORTS.items() if marker in snippet), "python")
    return f"{document}-{number}-{sdk}"


SNIPPETS = python_snippets(README)
ALL_SNIPPETS = [
    pytest.param(document, snippet, id=snippet_id(document, number, snippet))
    for document in DOCUMENTS_WITH_SNIPPETS
    for number, snippet in enumerate(python_snippets((ROOT / document).read_text()), start=1)
]


@pytest.fixture
def example_gateway(gateway_factory: Any) -> RunningGateway:
    settings = load_settings(None)
    config = {**settings.model_dump(mode="json", by_alias=True), "data_dir": ":memory:"}  # not the cwd
    return gateway_factory(config)  # type: ignore[no-any-return]


def test_readme_has_an_example_for_each_sdk() -> None:
    joined = "\n".join(SNIPPETS)
    for sdk in ("from openai import OpenAI", "import anthropic", "from google import genai"):
        assert sdk in joined


def test_api_reference_has_its_five_sdk_examples() -> None:
    ids = [param.id for param in ALL_SNIPPETS if param.values[0] == "docs/api.md"]
    assert ids == [
        "docs/api.md-1-openai",
        "docs/api.md-2-openai",
        "docs/api.md-3-openai",
        "docs/api.md-4-anthropic",
        "docs/api.md-5-genai",
    ]


def assert_prints_what_the_calls_return(snippet: str, out: str) -> None:
    """Each example's output, as the embedded example's fake models answer: echo, vectors or names."""
    if "embeddings.create" in snippet:
        assert re.fullmatch(r"2 [1-9]\d*\n", out), out  # two inputs, two vectors of some length
    elif "models.list" in snippet:
        assert "'fake-model'" in out and "'fake-embedding'" in out
    else:
        calls = 2 if "stream" in snippet else 1  # a plain call, then (where shown) a streamed one
        assert out.count("You said: Hello") == calls, out


@pytest.mark.parametrize(("document", "snippet"), ALL_SNIPPETS)
def test_python_snippet_runs_against_the_embedded_example(
    document: str, snippet: str, example_gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "http://127.0.0.1:8000" in snippet  # the address `make run` serves, replaced below
    code = snippet.replace("http://127.0.0.1:8000", example_gateway.url)
    exec(compile(code, document, "exec"), {})  # noqa: S102 - the documentation's own example code
    assert_prints_what_the_calls_return(snippet, capsys.readouterr().out)


def test_curl_example_runs(example_gateway: RunningGateway) -> None:
    command = re.search(r"```sh\n(curl .*?)```", README, flags=re.DOTALL)
    assert command is not None
    script = command.group(1).replace("http://127.0.0.1:8000", example_gateway.url)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert "You said: Hello" in result.stdout
