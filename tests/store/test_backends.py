"""The shared-state backend registry: a URL scheme picks an import string, imported only when chosen."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

from ferryman.core.shared_state import Window
from ferryman.errors import ConfigError
from ferryman.store.backends import SHARED_STATE_BACKENDS, open_shared_state
from ferryman.store.memory import MemoryLedger, MemoryWindowCounters


@pytest.mark.parametrize("url", ["memory://", "MEMORY://"])
async def test_memory_url_opens_working_in_process_state(url: str) -> None:
    state = await open_shared_state(url)
    try:
        assert isinstance(state.counters, MemoryWindowCounters)
        assert isinstance(state.ledger, MemoryLedger)
        assert (await state.counters.check_and_add([Window("k", 1, 60)], 1)).allowed
        assert not (await state.counters.check_and_add([Window("k", 1, 60)], 1)).allowed
    finally:
        await state.close()


@pytest.mark.parametrize("url", ["postgres://admin:hunter2@db/x", "nowhere", ""])
async def test_unknown_scheme_names_the_known_ones_and_hides_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        await open_shared_state(url)
    [(path, message)] = exc.value.problems
    assert path == "shared_state"
    assert "known: memory://" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(("scheme", "target"), sorted(SHARED_STATE_BACKENDS.items()))
def test_every_registered_backend_is_an_async_opener(scheme: str, target: str) -> None:
    module_name, _, attribute = target.partition(":")
    opener = getattr(importlib.import_module(module_name), attribute)
    assert inspect.iscoroutinefunction(opener)
    assert next(iter(inspect.signature(opener).parameters)) == "url"


def test_backends_are_imported_only_when_chosen() -> None:
    probe = "import sys, ferryman.store.backends; print('ferryman.store.memory' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
