"""Parsing references, and which config keys may hold one."""

from __future__ import annotations

import sys

import pytest
from pydantic import BaseModel, SecretStr

from ferryman.errors import SecretError
from ferryman.secret_refs import SECRET_FIELDS, SecretReference, SecretResolver, SecretValue
from ferryman.secret_refs.vault import split_vault_path
from ferryman.settings import Settings


@pytest.mark.parametrize(
    ("text", "scheme", "locator", "field"),
    [
        ("file:/run/secrets/openai", "file", "/run/secrets/openai", None),
        ("file:/run/secrets/all.json#openai", "file", "/run/secrets/all.json", "openai"),
        ("aws-sm:prod/ferryman#openai", "aws-sm", "prod/ferryman", "openai"),
        (
            "aws-sm:arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod-AbCdEf#key",
            "aws-sm",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod-AbCdEf",
            "key",
        ),
        ("aws-sm:plain-string-secret", "aws-sm", "plain-string-secret", None),
        ("vault:secret/data/ferryman#openai", "vault", "secret/data/ferryman", "openai"),
    ],
)
def test_references_parse_into_scheme_locator_and_field(
    text: str, scheme: str, locator: str, field: str | None
) -> None:
    reference = SecretReference.parse(text)
    assert reference == SecretReference(scheme, locator, field, text)
    assert str(reference) == text


@pytest.mark.parametrize("text", ["sk-plain-key", "https://hooks.example/x", "env:FOO", "", "redis://h:6379"])
def test_plain_values_are_not_references(text: str) -> None:
    assert SecretReference.parse(text) is None


@pytest.mark.parametrize(
    ("text", "complaint"), [("vault:", "names no secret"), ("file:/x#", "without a field")]
)
def test_malformed_references_are_errors_naming_them(text: str, complaint: str) -> None:
    with pytest.raises(SecretError, match=complaint) as caught:
        SecretReference.parse(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("locator", "mount", "path"),
    [
        ("secret/data/ferryman", "secret", "ferryman"),
        ("kv/team/data/apps/llm", "kv/team", "apps/llm"),
        ("secret/ferryman", "secret", "ferryman"),
        ("kv/apps/llm", "kv", "apps/llm"),
        ("ferryman", "secret", "ferryman"),
    ],
)
def test_vault_paths_name_mount_and_secret_in_three_spellings(locator: str, mount: str, path: str) -> None:
    assert split_vault_path(locator) == (mount, path)


def test_a_secret_value_reads_its_latest_value_and_never_prints_it() -> None:
    holder = SecretValue("sk-old-value", SecretReference.parse("file:/k"))  # type: ignore[arg-type]
    assert isinstance(holder, SecretStr)
    assert holder.replace("sk-new-value") is True
    assert holder.replace("sk-new-value") is False
    assert holder.get_secret_value() == "sk-new-value"
    assert "sk-new-value" not in repr(holder) + str(holder)
    assert "file:/k" in repr(holder)


def _secret_str_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """The key path of every SecretStr field in the settings tree (`[]` for list items)."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        paths |= _annotation_paths(field.annotation, f"{prefix}{field.alias or name}")
    return paths


def _annotation_paths(annotation: object, path: str) -> set[str]:
    if annotation is SecretStr:
        return {path}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _secret_str_paths(annotation, f"{path}.")
    if getattr(annotation, "__origin__", None) is list:
        path += "[]"
    return {p for arg in getattr(annotation, "__args__", ()) for p in _annotation_paths(arg, path)}


def test_every_secret_str_field_of_the_settings_takes_a_reference() -> None:
    secret_strs = {path for path, kind in SECRET_FIELDS.items() if kind != "text"}
    assert _secret_str_paths(Settings) == secret_strs


@pytest.mark.parametrize(
    ("reference", "package", "extra"), [("aws-sm:x#k", "boto3", "aws"), ("vault:x#k", "hvac", "vault")]
)
def test_a_missing_optional_client_is_an_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, reference: str, package: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # as if the extra were not installed
    for module in ("ferryman.secret_refs.aws", "ferryman.secret_refs.vault"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    parsed = SecretReference.parse(reference)
    assert parsed is not None
    with pytest.raises(SecretError) as caught:
        SecretResolver({}).resolve(parsed)
    assert str(caught.value) == (
        f"cannot resolve secret reference {reference!r}: "
        f"{parsed.scheme}: references need {package}: pip install 'ferryman[{extra}]'"
    )
