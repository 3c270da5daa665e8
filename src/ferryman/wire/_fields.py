"""Typed reads of raw JSON fields for the wire codecs, and the path-aware error they raise on bad input.

Every codec walks untrusted JSON in both directions: a client's request body and an upstream's reply.
The readers here check one field each and, when it is wrong, raise `Malformed` naming the field's JSON
path (`messages[2].content[0].text`). Each public entry point of a codec maps `Malformed` to its own
public error: `InvalidRequestError(param=path)` for a client's body, `UpstreamConnectionError` for an
upstream's reply. So one set of checks serves both directions.

Two flavours, one message style (`'<path>' is required`, `'<path>' must be a string, not number`):

- `get_*(obj, key, prefix)` read `obj[key]`. The path is only formatted when the field is wrong, so a
  valid body pays for one dict lookup and one isinstance per field. Use these for object fields.
- `as_*(value, path)` check a value already in hand: array elements, or fields whose key varies.

A JSON null counts as absent: optional readers return None for it, required ones say "is required".
"""

from __future__ import annotations

import orjson

from ferryman.core.canonical import JSONObject, JSONValue
from ferryman.errors import InvalidRequestError

_LARGEST_NUMBER = 1e300
"""Bound for unranged numbers: also keeps float() of a huge JSON integer from overflowing."""


class Malformed(Exception):
    """A JSON field is missing or wrong; `path` names it (None: the body as a whole).

    Raised deep inside a parse and caught at the codec's public entry point, which knows whether the
    JSON came from a client (the client's fault, 400) or from an upstream (the upstream's fault, 502).
    """

    def __init__(self, path: str | None, problem: str) -> None:
        message = problem if path is None else f"'{path}' {problem}"
        super().__init__(message)
        self.path = path
        self.message = message

    def as_invalid_request(self) -> InvalidRequestError:
        """The client-facing error: a 400 whose `param` names the field."""
        return InvalidRequestError(self.message, param=self.path)


def field_path(prefix: str, key: str) -> str:
    """The JSON path of `key` inside the object at `prefix` ("" for the body itself)."""
    return f"{prefix}.{key}" if prefix else key


def json_type(value: JSONValue) -> str:
    """Name a JSON value's type the way an API user would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def wrong(value: JSONValue, path: str, expected: str) -> Malformed:
    """The error for `value` at `path`, which should have been `expected` ("a string", "an array" …)."""
    if value is None:
        return Malformed(path, "is required")
    return Malformed(path, f"must be {expected}, not {json_type(value)}")


def as_body(value: object) -> JSONObject:
    """A whole request or reply body, which must be a JSON object."""
    if isinstance(value, dict):
        return value
    raise Malformed(None, "the body must be a JSON object")


# --- Values in hand ----------------------------------------------------------------------------------


def as_object(value: JSONValue, path: str) -> JSONObject:
    """`value` as a JSON object."""
    if isinstance(value, dict):
        return value
    raise wrong(value, path, "an object")


def as_list(value: JSONValue, path: str) -> list[JSONValue]:
    """`value` as a JSON array."""
    if isinstance(value, list):
        return value
    raise wrong(value, path, "an array")


def as_str(value: JSONValue, path: str) -> str:
    """`value` as a string."""
    if isinstance(value, str):
        return value
    raise wrong(value, path, "a string")


def as_opt_str(value: JSONValue, path: str) -> str | None:
    """`value` as a string, or None for null."""
    if value is None or isinstance(value, str):
        return value
    raise wrong(value, path, "a string")


# --- Fields of an object -----------------------------------------------------------------------------


def get_str(obj: JSONObject, key: str, prefix: str = "") -> str:
    """A required string field."""
    value = obj.get(key)
    if isinstance(value, str):
        return value
    raise wrong(value, field_path(prefix, key), "a string")


def get_opt_str(obj: JSONObject, key: str, prefix: str = "") -> str | None:
    """An optional string field."""
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise wrong(value, field_path(prefix, key), "a string")


def get_opt_bool(obj: JSONObject, key: str, prefix: str = "") -> bool | None:
    """An optional boolean field."""
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise wrong(value, field_path(prefix, key), "a boolean")


def get_object(obj: JSONObject, key: str, prefix: str = "") -> JSONObject:
    """A required object field."""
    value = obj.get(key)
    if isinstance(value, dict):
        return value
    raise wrong(value, field_path(prefix, key), "an object")


def get_opt_object(obj: JSONObject, key: str, prefix: str = "") -> JSONObject | None:
    """An optional object field."""
    value = obj.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise wrong(value, field_path(prefix, key), "an object")


def get_list(obj: JSONObject, key: str, prefix: str = "") -> list[JSONValue]:
    """A required array field."""
    value = obj.get(key)
    if isinstance(value, list):
        return value
    raise wrong(value, field_path(prefix, key), "an array")


def get_opt_list(obj: JSONObject, key: str, prefix: str = "") -> list[JSONValue] | None:
    """An optional array field."""
    value = obj.get(key)
    if value is None or isinstance(value, list):
        return value
    raise wrong(value, field_path(prefix, key), "an array")


def get_int(obj: JSONObject, key: str, prefix: str = "", *, minimum: int | None = None) -> int:
    """A required integer field, at least `minimum` when given."""
    value = get_opt_int(obj, key, prefix, minimum=minimum)
    if value is None:
        raise wrong(None, field_path(prefix, key), "an integer")
    return value


def get_opt_int(
    obj: JSONObject, key: str, prefix: str = "", *, minimum: int | None = None, whole_floats: bool = False
) -> int | None:
    """An optional integer field, at least `minimum` when given.

    `whole_floats` accepts `100.0` for 100, as proto JSON (Gemini) does and as JSON Schema's
    `integer` (the OpenAPI schema the gateway serves) means; booleans are never integers.
    """
    value = obj.get(key)
    if value is None:
        return None
    if whole_floats and isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong(value, field_path(prefix, key), "an integer")
    if minimum is not None and value < minimum:
        raise Malformed(field_path(prefix, key), f"must be at least {minimum}")
    return value


def get_opt_number(
    obj: JSONObject,
    key: str,
    prefix: str = "",
    *,
    low: float = -_LARGEST_NUMBER,
    high: float = _LARGEST_NUMBER,
) -> float | None:
    """An optional number field (integer or not) within [low, high]; booleans are not numbers."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise wrong(value, field_path(prefix, key), "a number")
    if not low <= value <= high:  # also refuses NaN
        raise Malformed(field_path(prefix, key), f"must be between {low:g} and {high:g}")
    return float(value)


# --- JSON text inside fields -------------------------------------------------------------------------


def load_object(text: str) -> JSONObject | None:
    """The JSON object a text field (tool-call arguments, a tool result) encodes, or None if it is not one.

    Formats whose tool calls carry arguments as an object (Anthropic, Gemini) need this to send a
    canonical call's argument text; text that does not even start like an object skips the parser.
    """
    if not text.lstrip().startswith("{"):
        return None
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


# --- the gateway's own options in a body -------------------------------------------------------------

MAX_TIMEOUT_SECONDS = 86_400.0
MAX_FALLBACKS = 8


def get_gateway_options(body: JSONObject) -> tuple[tuple[str, ...] | None, float | None]:
    """`fallbacks` (model names; `[]`: none) and `timeout` (seconds), Ferryman's own fields in an OpenAI
    body (LiteLLM's names for them); read here and never sent upstream."""
    raw = get_opt_list(body, "fallbacks")
    fallbacks: tuple[str, ...] | None = None
    if raw is not None:
        if len(raw) > MAX_FALLBACKS:
            raise Malformed("fallbacks", f"may name at most {MAX_FALLBACKS} models")
        fallbacks = tuple(as_str(name, f"fallbacks[{i}]") for i, name in enumerate(raw))
    timeout = get_opt_number(body, "timeout", low=0.0, high=MAX_TIMEOUT_SECONDS)
    if timeout == 0:
        raise Malformed("timeout", "must be a positive number of seconds")
    return fallbacks, timeout
