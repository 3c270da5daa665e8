"""Ids for the holds a request takes in shared state: unique across replicas and restarts, and cheap.

A hold's id must never be the client's request id (clients may reuse those) and must not collide with
another replica's. A `uuid4` per hold costs an `os.urandom` call and a `UUID` object on every governed
request; a random prefix drawn once per process, the process id (a forked copy has another) and a
counter are as unique and cost one string format.
"""

from __future__ import annotations

import itertools
import os
import secrets

_PROCESS = secrets.token_hex(8)
_numbers = itertools.count()


def unique_id(kind: str) -> str:
    """`kind-<process random>-<pid>-<n>`: a fresh id, never handed out before by any replica."""
    return f"{kind}-{_PROCESS}-{os.getpid()}-{next(_numbers)}"
