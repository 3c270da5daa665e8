"""Shared-state backends by URL scheme: a dict of import strings, imported only when chosen.

Like uvicorn's loop and protocol choices, there is no plugin framework: adding a backend is one module
with an async `open_…(url) -> SharedState` and one line here. Importing lazily keeps a backend's client
library (and its import time) out of processes that never use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import urlsplit

from ferryman.core.shared_state import SharedState
from ferryman.errors import ConfigError

SHARED_STATE_BACKENDS: dict[str, str] = {
    "memory": "ferryman.store.memory:open_memory_state",
    "redis": "ferryman.store.redis_state:open_redis_state",
    "rediss": "ferryman.store.redis_state:open_redis_state",
    "redis+sentinel": "ferryman.store.redis_state:open_redis_state",
    "redis+cluster": "ferryman.store.redis_state:open_redis_state",
}
"""URL scheme → `"module:callable"` opening that backend's `SharedState`."""

SharedStateOpener = Callable[[str], Awaitable[SharedState]]


def shared_state_opener(url: str) -> SharedStateOpener:
    """The opener registered for `url`'s scheme; `ConfigError` naming the known schemes otherwise."""
    scheme = urlsplit(url).scheme
    target = SHARED_STATE_BACKENDS.get(scheme)
    if target is None:
        # Name only the scheme: the rest of a URL may carry a password.
        known = ", ".join(f"{name}://" for name in sorted(SHARED_STATE_BACKENDS))
        problem = f"unknown backend {scheme + '://' if scheme else 'URL without a scheme'}; known: {known}"
        raise ConfigError([("shared_state", problem)])
    module_name, _, attribute = target.partition(":")
    return cast(SharedStateOpener, getattr(importlib.import_module(module_name), attribute))


async def open_shared_state(url: str) -> SharedState:
    """Open the backend `url` names (`memory://`, `redis://`, …); the caller closes it with `close`."""
    return await shared_state_opener(url)(url)
