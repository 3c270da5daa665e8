"""`ferryman models reencrypt`: rewrite every stored provider credential under the current encryption key.

Run it once every replica runs with the new `FERRYMAN_ENCRYPTION_KEY` and the old one in
`FERRYMAN_ENCRYPTION_KEY_PREVIOUS`; once it reports done, no row needs the previous key. Replicas never
rewrite rows by themselves: one restarted early with the new key would otherwise lock the replicas still
on the old key out of every credential in the middle of a rolling deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ferryman.api.runtime_models import cipher_for, reseal_credentials
from ferryman.errors import ConfigError, FerrymanError
from ferryman.settings import load_settings
from ferryman.store.model_store import ModelStore
from ferryman.store.service import KeyService


def add_models_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models` and its subcommands."""
    models = commands.add_parser("models", help="runtime models stored in the database")
    actions = models.add_subparsers(dest="models_command", required=True)
    reencrypt = actions.add_parser(
        "reencrypt", help="rewrite stored credentials under the current FERRYMAN_ENCRYPTION_KEY"
    )
    reencrypt.add_argument("--config", help="YAML config file (its database_url and encryption)")


def run_models_command(args: argparse.Namespace) -> int:
    """Run a `models` subcommand; 0 on success, 1 with a message on stderr otherwise."""
    try:
        return asyncio.run(_reencrypt(args.config))
    except (ConfigError, FerrymanError) as exc:
        print(f"ferryman models {args.models_command}: {exc}", file=sys.stderr)
        return 1


async def _reencrypt(config: str | None) -> int:
    settings = load_settings(config)
    cipher = cipher_for(settings)
    if cipher is None:
        raise ConfigError([("encryption.key", "not set: set FERRYMAN_ENCRYPTION_KEY to the new key")])
    keys = await KeyService.open(settings, listen=False)
    try:
        assert keys.engine is not None  # noqa: S101 - open() always opens one
        changed = await reseal_credentials(ModelStore(keys.engine), cipher)
        if changed:
            await keys.announce_models_changed()
    finally:
        await keys.aclose()
    print(f"re-encrypted {changed} credential(s) under key {cipher.current_key_id}")
    return 0
