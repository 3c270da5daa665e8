"""The README's examples work: its Python snippets run against the embedded example config."""

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
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


@pytest.fixture
def example_gateway(gateway_factory: Any) -> RunningGateway:
    settings = load_settings(None)
    return gateway_factory(settings.model_dump(mode="json"))  # type: ignore[no-any-return]


def test_readme_has_an_example_for_each_sdk() -> None:
    joined = "\n".join(SNIPPETS)
    for sdk in ("from openai import OpenAI", "import anthropic", "from google import genai"):
        assert sdk in joined


@pytest.mark.parametrize("snippet", SNIPPETS, ids=["openai", "anthropic", "google-genai"])
def test_python_snippet_runs_against_the_embedded_example(
    snippet: str, example_gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code = snippet.replace("http://127.0.0.1:8000", example_gateway.url)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example code
    assert "You said: Hello" in capsys.readouterr().out


def test_curl_example_runs(example_gateway: RunningGateway) -> None:
    command = re.search(r"```sh\n(curl .*?)```", README, flags=re.DOTALL)
    assert command is not None
    script = command.group(1).replace("http://127.0.0.1:8000", example_gateway.url)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert "You said: Hello" in result.stdout
