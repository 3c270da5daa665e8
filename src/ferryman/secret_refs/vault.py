"""`vault:path#field`: HashiCorp Vault's KV version 2 engine through hvac (the `vault` extra).

The address and token come from `VAULT_ADDR` and `VAULT_TOKEN` (then hvac's own fallback,
`~/.vault-token`), with `VAULT_NAMESPACE` and `VAULT_CACERT` when set. A path names the mount and the
secret in one of three ways:

    vault:secret/data/ferryman#openai   the API path, as Vault policies spell it (mount before /data/)
    vault:secret/ferryman#openai        as `vault kv get secret/ferryman`: the first segment is the mount
    vault:ferryman#openai               the default mount, `secret`
"""

from __future__ import annotations

from collections.abc import Mapping

import hvac
import hvac.exceptions

from ferryman.errors import SecretError
from ferryman.secret_refs.sources import Document

DEFAULT_MOUNT = "secret"
_TIMEOUT_SECONDS = 10


def split_vault_path(locator: str) -> tuple[str, str]:
    """`(mount, path)` for a reference's locator, in any of the three spellings."""
    locator = locator.strip("/")
    if "/data/" in locator:
        mount, _, path = locator.partition("/data/")
        return mount, path
    mount, slash, path = locator.partition("/")
    return (mount, path) if slash else (DEFAULT_MOUNT, locator)


class VaultSource:
    """Reads the latest version of a KV v2 secret; the client is made on first use."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._client: hvac.Client | None = None

    def fetch(self, locator: str) -> Document:
        """The secret's fields (`data.data` of the KV v2 read)."""
        mount, path = split_vault_path(locator)
        try:
            answer = self._vault().secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath as exc:
            raise SecretError(f"Vault has no secret {path!r} in mount {mount!r}") from exc
        except hvac.exceptions.Forbidden as exc:
            raise SecretError("Vault refused the token (403): check VAULT_TOKEN and its policy") from exc
        except hvac.exceptions.VaultError as exc:
            raise SecretError(f"Vault answered {type(exc).__name__}") from exc
        except OSError as exc:  # requests' connection errors are OSErrors
            raise SecretError(f"Vault could not be reached at VAULT_ADDR: {type(exc).__name__}") from exc
        fields = answer.get("data", {}).get("data") if isinstance(answer, dict) else None
        if not isinstance(fields, dict):
            raise SecretError("Vault's answer is not a KV version 2 secret")
        return fields

    def _vault(self) -> hvac.Client:
        if self._client is None:
            env = self._environ
            address = env.get("VAULT_ADDR")
            if not address:
                raise SecretError("VAULT_ADDR is not set")
            self._client = hvac.Client(
                url=address,
                token=env.get("VAULT_TOKEN"),
                namespace=env.get("VAULT_NAMESPACE"),
                verify=env.get("VAULT_CACERT") or True,
                timeout=_TIMEOUT_SECONDS,
            )
        return self._client
