"""What a secret reference is (`file:/path`, `aws-sm:name#field`, `vault:path#field`) and the holder of
the value it resolved to."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from ferryman.errors import SecretError

SCHEMES = ("file", "aws-sm", "vault")


@dataclass(frozen=True, slots=True)
class SecretReference:
    """A parsed reference: which store (`scheme`), which secret in it (`locator`), which `field` of it.

    `text` is the reference as written in the config; it is what errors and logs show, never the value.
    """

    scheme: str
    locator: str
    field: str | None
    text: str

    @classmethod
    def parse(cls, text: str) -> SecretReference | None:
        """The reference `text` spells, None when it is a plain value; SecretError when malformed."""
        scheme, colon, rest = text.partition(":")
        if not colon or scheme not in SCHEMES:
            return None
        locator, hash_sign, field = rest.rpartition("#") if "#" in rest else (rest, "", "")
        if not locator:
            raise SecretError(f"secret reference {text!r} names no secret after '{scheme}:'")
        if hash_sign and not field:
            raise SecretError(f"secret reference {text!r} ends in '#' without a field name")
        return cls(scheme, locator, field or None, text)

    def __str__(self) -> str:
        return self.text


class SecretValue(SecretStr):
    """A `SecretStr` read from a reference, whose value a refresh may replace while the gateway runs.

    Read it with `get_secret_value()` at the moment of use (per request), never once into a copy: that
    is what lets a rotated key take effect without a restart. Equality and hashing go by identity, since
    the value inside can change.
    """

    def __init__(self, value: str, reference: SecretReference) -> None:
        super().__init__(value)
        self.reference = reference

    def replace(self, value: str) -> bool:
        """Hold `value` from now on; whether it differs from the one held before."""
        changed = value != self._secret_value
        self._secret_value = value  # one attribute store: a reader sees the old value or the new one
        return changed

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"SecretValue('**********', reference={self.reference.text!r})"
