"""Where referenced secrets are read from: one source per scheme, chosen by name from a dict of import
strings (so boto3 and hvac are imported only when a reference needs them), behind one resolver."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol, cast

from ferryman.errors import SecretError
from ferryman.secret_refs.reference import SecretReference

Document = str | Mapping[str, object]
"""What a source returns for a locator: a string, or a mapping of fields (Vault's KV data)."""

SOURCES: dict[str, str] = {
    "file": "ferryman.secret_refs.sources:FileSource",
    "aws-sm": "ferryman.secret_refs.aws:AwsSecretsManagerSource",
    "vault": "ferryman.secret_refs.vault:VaultSource",
}
_EXTRAS = {"aws-sm": ("aws", "boto3"), "vault": ("vault", "hvac")}


class SecretSource(Protocol):
    """One secret store. Built with the environment it takes its address and credentials from."""

    def fetch(self, locator: str) -> Document:
        """The secret at `locator`; SecretError (with a reason that holds no secret) when unreadable."""
        ...


SourceFactory = Callable[[Mapping[str, str]], SecretSource]


class FileSource:
    """`file:/path`: a file's contents without the trailing newline (Kubernetes secret volumes, Docker
    secrets). Read again at every refresh, so a rewritten or re-linked file is picked up."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        del environ  # a file needs no address or credentials

    def fetch(self, locator: str) -> Document:
        """The file's text, stripped of trailing line breaks."""
        try:
            text = Path(locator).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"cannot read the file: {exc.strerror or type(exc).__name__}") from exc
        except UnicodeDecodeError as exc:
            raise SecretError("the file is not UTF-8 text") from exc
        return text.rstrip("\r\n")


class SecretResolver:
    """Reads references through their sources; each source is opened once, on first use.

    Within one `resolve_all` pass a secret is fetched once however many fields of it are referenced.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._sources: dict[str, SecretSource] = {}
        self._documents: dict[tuple[str, str], Document | SecretError] = {}

    def resolve(self, reference: SecretReference) -> str:
        """The value `reference` names now; SecretError naming the reference (never a value) if not."""
        try:
            return _pick_field(reference, self._document(reference))
        except SecretError as exc:
            raise SecretError(f"cannot resolve secret reference {reference.text!r}: {exc}") from exc

    def resolve_all(self, references: Iterable[SecretReference]) -> dict[SecretReference, str | SecretError]:
        """A fresh read of every reference (nothing kept from earlier passes), each failure in its place."""
        self._documents.clear()
        results: dict[SecretReference, str | SecretError] = {}
        for reference in references:
            try:
                results[reference] = self.resolve(reference)
            except SecretError as exc:
                results[reference] = exc
        self._documents.clear()  # values live only in their holders
        return results

    def _document(self, reference: SecretReference) -> Document:
        key = (reference.scheme, reference.locator)
        if key not in self._documents:
            try:
                self._documents[key] = self._source(reference.scheme).fetch(reference.locator)
            except SecretError as exc:
                self._documents[key] = exc
        document = self._documents[key]
        if isinstance(document, SecretError):
            raise document
        return document

    def _source(self, scheme: str) -> SecretSource:
        if scheme not in self._sources:
            self._sources[scheme] = _load_factory(scheme)(self._environ)
        return self._sources[scheme]


def _load_factory(scheme: str) -> SourceFactory:
    module_name, _, attribute = SOURCES[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra, package = _EXTRAS.get(scheme, ("", ""))
        if exc.name is None or exc.name.partition(".")[0] not in {package, "botocore", "requests"}:
            raise
        raise SecretError(f"{scheme}: references need {package}: pip install 'ferryman[{extra}]'") from exc
    return cast(SourceFactory, getattr(module, attribute))


def _pick_field(reference: SecretReference, document: Document) -> str:
    """The whole string, or the `#field` of a JSON object / a mapping."""
    field = reference.field
    if field is None:
        if not isinstance(document, str):
            raise SecretError("the secret holds several fields: name one with '#field'")
        return _non_empty(document)
    fields: object = document
    if isinstance(document, str):
        try:
            fields = json.loads(document)
        except ValueError:
            fields = None  # the parser's message may quote the document, so it is not kept
    if not isinstance(fields, Mapping):
        raise SecretError("the secret is not a JSON object, so '#field' cannot pick a field from it")
    if field not in fields:
        raise SecretError(f"the secret has no field {field!r}")
    value = fields[field]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SecretError(f"field {field!r} is not a string")
    return _non_empty(str(value))


def _non_empty(value: str) -> str:
    if not value:
        raise SecretError("the secret is empty")
    return value
