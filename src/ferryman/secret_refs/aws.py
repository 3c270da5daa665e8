"""`aws-sm:name#field`: AWS Secrets Manager through boto3 (the `aws` extra).

The region, endpoint and credentials come from the standard AWS settings: `AWS_REGION` /
`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_SECRETS_MANAGER` / `AWS_ENDPOINT_URL`, and boto3's credential
chain (environment, profile, IRSA web identity, instance role). botocore errors become `SecretError`
here, by their code alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ferryman.errors import SecretError
from ferryman.secret_refs.sources import Document

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

# A start-up or refresh must fail in seconds, not hang on an unreachable endpoint.
_CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})


class AwsSecretsManagerSource:
    """Reads a secret's current `SecretString` (AWSCURRENT); the client is made on first use."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._client: SecretsManagerClient | None = None

    def fetch(self, locator: str) -> Document:
        """The secret's string (a JSON object when `#field` is to pick from it)."""
        try:
            answer = self._secrets_manager().get_secret_value(SecretId=locator)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "an error")
            raise SecretError(f"Secrets Manager answered {code}") from exc
        except BotoCoreError as exc:
            raise SecretError(f"Secrets Manager could not be asked: {type(exc).__name__}") from exc
        if "SecretString" not in answer:
            raise SecretError("the secret holds binary data (SecretBinary), not a string")
        return answer["SecretString"]

    def _secrets_manager(self) -> SecretsManagerClient:
        if self._client is None:
            env = self._environ
            session = boto3.session.Session(
                aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=env.get("AWS_SESSION_TOKEN"),
                region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            )
            endpoint = env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or env.get("AWS_ENDPOINT_URL")
            self._client = session.client("secretsmanager", endpoint_url=endpoint, config=_CLIENT_CONFIG)
        return self._client
