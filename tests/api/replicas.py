"""Starting and stopping several `ferryman serve` processes at once, for tests of replicas.

Each process spends seconds importing and loading before it is live, and about a second draining when
it is stopped; one after the other, three replicas cost three of each, together little more than one.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from tests.processes import gateway_process

Gateway = tuple[subprocess.Popen[bytes], str]


def gateway_processes(
    stack: ExitStack, config: dict[str, Any], tmp_path: Path, count: int = 3
) -> list[Gateway]:
    """`count` gateway processes for `config`, started together and stopped together when `stack`
    closes: (process, base URL) each.

    If one does not come up, those that did are stopped (when `stack` closes) and its error is raised.
    """
    contexts = [gateway_process(config, tmp_path) for _ in range(count)]
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(context.__enter__) for context in contexts]
        wait(futures)
    started = [
        context for context, future in zip(contexts, futures, strict=True) if future.exception() is None
    ]
    stack.callback(_stop_together, started)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    return [future.result() for future in futures]


def _stop_together(contexts: list[AbstractContextManager[Gateway]]) -> None:
    """Leave each gateway's context (SIGTERM, wait, SIGKILL what is left) at the same time.

    The gateways' exits are told of no exception: `gateway_process` stops its process either way, and
    the test's own exception, if any, goes on past the stack unchanged.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(contexts))) as pool:
        for future in [pool.submit(context.__exit__, None, None, None) for context in contexts]:
            future.result()
