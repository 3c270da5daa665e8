"""Gemini's OpenAPI-dialect Schema (`type: "OBJECT"`, `nullable`, snake_case keys) as JSON Schema."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ferryman.core.canonical import JSONObject, JSONValue
from ferryman.wire._fields import Malformed, as_list, as_object

_SCHEMA_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "any_of": "anyOf",
        "max_items": "maxItems",
        "min_items": "minItems",
        "max_length": "maxLength",
        "min_length": "minLength",
        "max_properties": "maxProperties",
        "min_properties": "minProperties",
        "property_ordering": "propertyOrdering",
    }
)

_MAX_SCHEMA_DEPTH: Final = 64


def to_json_schema(schema: JSONValue, param: str, depth: int = 0) -> JSONObject:
    """Gemini's OpenAPI-dialect Schema as JSON Schema: lower-case types, `nullable` folded, camelCase."""
    schema = as_object(schema, param)
    if depth > _MAX_SCHEMA_DEPTH:
        raise Malformed(param, "is nested too deeply")
    converted: JSONObject = {}
    for raw_key, value in schema.items():
        key = _SCHEMA_KEYS.get(raw_key, raw_key)
        if key == "type" and isinstance(value, str):
            converted[key] = value.lower()
        elif key == "items":
            converted[key] = to_json_schema(value, f"{param}.{raw_key}", depth + 1)
        elif key == "anyOf":
            options = as_list(value, f"{param}.{raw_key}")
            converted[key] = [
                to_json_schema(o, f"{param}.{raw_key}[{i}]", depth + 1) for i, o in enumerate(options)
            ]
        elif key == "properties":
            fields = as_object(value, f"{param}.{raw_key}")
            converted[key] = {
                n: to_json_schema(s, f"{param}.{raw_key}.{n}", depth + 1) for n, s in fields.items()
            }
        elif key != "nullable":
            converted[key] = value
    if schema.get("nullable") is True and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    return converted
