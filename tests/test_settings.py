"""Config loading: interpolation, validation with exact key paths, the embedded example."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryman.errors import ConfigError
from ferryman.settings import load_settings, settings_from_mapping


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ferryman.yaml"
    path.write_text(text)
    return path


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(exc.value.problems)


def test_embedded_example_loads_and_serves_the_fake_model() -> None:
    settings = load_settings(None)
    assert [m.name for m in settings.models] == ["fake-model", "fake-embedding"]
    assert settings.models[0].deployments[0].provider == "fake"
    assert settings.master_key is None


def test_env_references_are_interpolated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "master_key: ${MASTER}\nmodels:\n  - name: m\n    deployments:\n"
        "      - {provider: openai, model: gpt-4o-mini, api_key: '${KEY}', api_base: '${BASE:-http://x/v1}'}\n",
    )
    settings = load_settings(path, environ={"MASTER": "sk-master", "KEY": "sk-upstream"})
    assert settings.master_key is not None and settings.master_key.get_secret_value() == "sk-master"
    deployment = settings.models[0].deployments[0]
    assert deployment.api_key is not None and deployment.api_key.get_secret_value() == "sk-upstream"
    assert deployment.api_base == "http://x/v1"


def test_unset_env_reference_names_its_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n  - name: m\n    deployments:\n      - {provider: openai, model: x, api_key: '${NOPE}'}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert problems_of(exc) == {"models[0].deployments[0].api_key": "environment variable NOPE is not set"}


def test_every_problem_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping(
            {
                "server": {"port": 70000, "colour": "blue"},
                "models": [
                    {"name": "a", "deployments": [{"provider": "nope", "model": "x"}]},
                    {"name": "b", "deployments": []},
                    {"name": "c", "deployments": [{"provider": "openai-compatible", "model": "x"}]},
                ],
            }
        )
    problems = problems_of(exc)
    assert "server.port" in problems
    assert "server.colour" in problems
    assert "models[0].deployments[0].provider" in problems
    assert "models[1].deployments" in problems
    assert any(path.startswith("models[2].deployments[0]") for path in problems)


def test_duplicate_model_names_are_refused() -> None:
    route = {"name": "m", "deployments": [{"provider": "fake", "model": "m"}]}
    with pytest.raises(ConfigError, match="defined twice"):
        settings_from_mapping({"models": [route, route]})


def test_api_base_must_be_http() -> None:
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping(
            {
                "models": [
                    {
                        "name": "m",
                        "deployments": [{"provider": "openai", "model": "m", "api_base": "ftp://x"}],
                    }
                ]
            }
        )
    assert "models[0].deployments[0].api_base" in problems_of(exc)


def test_yaml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "models: [\n"))
    assert "<file>" in problems_of(exc)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "- a\n- b\n"))
    assert "<root>" in problems_of(exc)


def test_a_static_keys_end_user_budgets_are_validated_with_their_key_path() -> None:
    key = {
        "alias": "app",
        "key": "fm-x",
        "end_user_budget": {"daily_usd": -1},
        "end_user_budgets": {"vip": {"monthly_usd": -2}, "": {}},
    }
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping({"keys": [key]})
    problems = problems_of(exc)
    assert "keys[0].end_user_budget.daily_usd" in problems
    assert "keys[0].end_user_budgets.vip.monthly_usd" in problems
    assert len(problems) == 3  # and the empty end-user id
    fine = settings_from_mapping({"keys": [key | {"end_user_budget": None, "end_user_budgets": {"vip": {}}}]})
    assert fine.keys[0].end_user_budgets["vip"].daily_usd is None


def _route(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "deployments": [{"provider": "fake", "model": name}], **extra}


def test_fallbacks_must_name_other_models_of_the_config() -> None:
    with pytest.raises(ConfigError, match="falls back to 'nope', which is not a model"):
        settings_from_mapping({"models": [_route("a", fallbacks=["nope"])]})
    with pytest.raises(ConfigError, match="lists itself as a fallback"):
        settings_from_mapping({"models": [_route("a", fallbacks=["a"])]})
    settings = settings_from_mapping({"models": [_route("a", fallbacks=["b"]), _route("b")]})
    assert settings.models[0].fallbacks == ["b"]


def test_retries_and_timeouts_have_documented_defaults_and_bounds() -> None:
    settings = settings_from_mapping({"models": [_route("a")]})
    assert settings.retries.max_attempts_per_deployment == 2
    assert (settings.retries.budget_ratio, settings.retries.budget_window_seconds) == (0.2, 10.0)
    assert settings.models[0].timeout_seconds is None
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(
            {"models": [_route("a", timeout_seconds=0)], "retries": {"max_attempts_per_deployment": 0}}
        )
    assert set(problems_of(caught)) == {"models[0].timeout_seconds", "retries.max_attempts_per_deployment"}
