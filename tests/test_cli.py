"""`ferryman check-config`: exit codes and key paths, run as users run it (a real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryman.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_valid_config_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "models:\n"
        "  - name: gpt\n    deployments:\n      - {provider: openai, model: gpt-4o-mini, api_key: k}\n"
        "  - name: claude\n    deployments:\n      - {provider: anthropic, model: claude-sonnet-4-5, api_key: k}\n"
    )
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "OK (2 models, 2 deployments)" in result.stdout


def test_broken_config_names_each_key_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "server: {port: -1}\n"
        "models:\n"
        "  - name: gpt\n    deployments:\n      - {provider: opneai, model: gpt-4o-mini}\n"
        "  - name: other\n    deployments:\n      - {provider: openai, model: x, timeouts: {connect: 0}}\n"
    )
    result = check_config(path)
    assert result.returncode == 1
    assert "server.port" in result.stderr
    assert "models[0].deployments[0].provider" in result.stderr
    assert "models[1].deployments[0].timeouts.connect" in result.stderr


def test_unpriced_model_is_an_error_at_check(tmp_path: Path) -> None:
    path = tmp_path / "unpriced.yaml"
    path.write_text(
        "models:\n  - name: local\n    deployments:\n"
        "      - {provider: openai-compatible, model: my-llama, api_base: 'http://127.0.0.1:1/v1'}\n"
    )
    result = check_config(path)
    assert result.returncode == 1
    assert "models[0].deployments[0].price" in result.stderr
    assert "my-llama" in result.stderr


def test_price_override_makes_a_local_model_valid(tmp_path: Path) -> None:
    path = tmp_path / "priced.yaml"
    path.write_text(
        "models:\n  - name: local\n    deployments:\n"
        "      - provider: openai-compatible\n        model: my-llama\n        api_base: 'http://127.0.0.1:1/v1'\n"
        "        price: {input_per_mtok: 0.1, output_per_mtok: 0.2}\n"
    )
    assert check_config(path).returncode == 0


def test_missing_file_fails(tmp_path: Path) -> None:
    result = check_config(tmp_path / "absent.yaml")
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_a_redis_url_the_gateway_cannot_use_is_an_error_at_check(tmp_path: Path) -> None:
    path = tmp_path / "redis.yaml"
    path.write_text("redis_url: 'redis+sentinel://:s3cret-pw@127.0.0.1:26379'\nmodels: []\n")
    result = check_config(path)
    assert result.returncode == 1
    assert "redis_url" in result.stderr and "service name" in result.stderr
    assert "s3cret-pw" not in result.stderr
