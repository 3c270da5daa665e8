"""Where in the config secret references are resolved, and finding their holders in the built settings.

Only the key paths in `SECRET_FIELDS` are looked at: a value elsewhere that happens to start with
`file:` is left alone. Secrets read per use get a `SecretValue` holder, which the refresher keeps
current; the others (read once into a pool, a hash or a header map) are resolved once, at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Literal

from pydantic import BaseModel, SecretStr

from ferryman.errors import SecretError
from ferryman.secret_refs.reference import SecretReference, SecretValue
from ferryman.secret_refs.sources import SecretResolver

SecretKind = Literal["refreshed", "secret", "text"]
"""`refreshed`: a SecretStr field its users read per use, so it is kept current (a `SecretValue`);
`secret`: a SecretStr field read once at start-up (the master key, hashed client keys); `text`: a str."""

# Key path pattern (`[]`: any list index, `*`: any mapping key) → what the field holds.
SECRET_FIELDS: dict[str, SecretKind] = {
    "master_key": "secret",  # the authenticator keeps its bytes
    "encryption.key": "secret",  # read once into the credential cipher
    "encryption.previous_keys[]": "secret",
    "database_url": "text",
    "redis_url": "text",
    "metrics.token": "refreshed",
    "budgets.alert_webhook_url": "text",
    "keys[].key": "secret",  # hashed into the key store at start-up
    "models[].deployments[].api_key": "refreshed",  # providers build their headers per request
    "models[].deployments[].headers.*": "text",
}


def resolve_references(tree: object, environ: Mapping[str, str], problems: list[tuple[str, str]]) -> object:
    """`tree` (parsed, interpolated config) with every secret reference replaced by its value.

    A reference that cannot be read is appended to `problems` under its key path (the message names
    the reference, never a value) and replaced by an empty string, so validation still runs.
    """
    return _resolve_node(tree, "", SecretResolver(environ), problems)


def secret_values(node: object, path: str = "") -> list[tuple[str, SecretValue]]:
    """Every `SecretValue` in a settings tree, with its key path: what a refresh reads again."""
    if isinstance(node, SecretValue):
        return [(path, node)]
    found: list[tuple[str, SecretValue]] = []
    if isinstance(node, BaseModel):
        for name, field in type(node).model_fields.items():
            found += secret_values(getattr(node, name), _join(path, field.alias or name))
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            found += secret_values(item, f"{path}[{index}]")
    elif isinstance(node, Mapping):
        for key, value in node.items():
            found += secret_values(value, _join(path, str(key)))
    return found


def _resolve_node(
    node: object, path: str, resolver: SecretResolver, problems: list[tuple[str, str]]
) -> object:
    if isinstance(node, dict):
        return {
            key: _resolve_node(value, _join(path, str(key)), resolver, problems)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_resolve_node(item, f"{path}[{i}]", resolver, problems) for i, item in enumerate(node)]
    if isinstance(node, str):
        kind = _secret_kind(path)
        if kind is not None:
            return _resolve_value(node, path, kind, resolver, problems)
    return node


def _resolve_value(
    text: str, path: str, kind: SecretKind, resolver: SecretResolver, problems: list[tuple[str, str]]
) -> object:
    try:
        reference = SecretReference.parse(text)
        if reference is None:
            return text
        value = resolver.resolve(reference)
    except SecretError as exc:
        problems.append((path, str(exc)))
        return ""
    if kind == "refreshed":
        return SecretValue(value, reference)
    return SecretStr(value) if kind == "secret" else value


def _secret_kind(path: str) -> SecretKind | None:
    """What the field at `path` holds, None when it is no secret's."""
    for pattern, kind in _patterns():
        if pattern.fullmatch(path):
            return kind
    return None


@cache
def _patterns() -> tuple[tuple[re.Pattern[str], SecretKind], ...]:
    def compile_path(spec: str) -> re.Pattern[str]:
        return re.compile(re.escape(spec).replace(r"\[\]", r"\[\d+\]").replace(r"\*", r".+"))

    return tuple((compile_path(spec), kind) for spec, kind in SECRET_FIELDS.items())


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
