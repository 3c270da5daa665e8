"""Secret references in the config, resolved at start-up and kept current while serving.

    file:/run/secrets/openai            a file's contents (Kubernetes secret volumes)
    aws-sm:prod/ferryman#openai         AWS Secrets Manager, a field of a JSON secret (`aws` extra)
    vault:secret/data/ferryman#openai   HashiCorp Vault KV v2 (`vault` extra)

`resolve_references` replaces them in the parsed config (`settings.load_settings` calls it); a secret
field gets a `SecretValue`, whose `get_secret_value()` a `SecretRefresher` keeps current. Every failure is
a `SecretError` that names the reference and its key path, never the value (docs/secrets.md).
"""

from ferryman.secret_refs.config import SECRET_FIELDS, resolve_references, secret_values
from ferryman.secret_refs.reference import SecretReference, SecretValue
from ferryman.secret_refs.refresh import SecretRefresher
from ferryman.secret_refs.sources import SecretResolver

__all__ = [
    "SECRET_FIELDS",
    "SecretReference",
    "SecretRefresher",
    "SecretResolver",
    "SecretValue",
    "resolve_references",
    "secret_values",
]
