"""Start, watch and stop the benchmark's own server processes, and read their CPU time and memory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_BYTES_PER_KIB = 1024


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """CPU seconds and resident memory of a process tree: the two costs a gateway adds to its host.

    The tree (the started process and all its descendants) is summed so a server that forks workers
    (nginx, uvicorn with workers) is charged in full.
    """

    cpu_seconds: float
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class ManagedProcess:
    """A server this benchmark started in its own session, so it can be stopped by its PID alone."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The PID we started; also the process-group id, since it leads its own session."""
        return self.popen.pid

    def has_exited(self) -> bool:
        """Tell whether the server died, so a readiness wait can stop early and show its log."""
        return self.popen.poll() is not None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM our own process group, then SIGKILL it if it has not gone after `timeout_s`."""
        if self.has_exited():
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.popen.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's combined stdout/stderr, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, signum: signal.Signals) -> None:
        # The group id is the PID we started (start_new_session=True), never a name match.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


def start_process(
    name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    """Start `argv` in a new session with its output in `log_dir/<name>.log`."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_tree_usage(root_pid: int) -> ProcessUsage:
    """Sum utime+stime and VmRSS over `root_pid` and its live descendants."""
    cpu_seconds = 0.0
    rss_bytes = 0
    for pid in _tree_pids(root_pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            cpu_seconds += _read_stat(pid)[1]
            rss_bytes += _read_rss_bytes(pid)
    return ProcessUsage(cpu_seconds=cpu_seconds, rss_bytes=rss_bytes)


def _tree_pids(root_pid: int) -> list[int]:
    children = _children_by_parent()
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            parent = _read_stat(int(entry.name))[0]
            children.setdefault(parent, []).append(int(entry.name))
    return children


def _read_stat(pid: int) -> tuple[int, float]:
    """(parent PID, CPU seconds) from /proc/<pid>/stat; see proc(5) for the field numbers."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    parent, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
    return parent, (utime + stime) / _CLOCK_TICKS


def _read_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * _BYTES_PER_KIB
    return 0  # kernel threads and zombies have no VmRSS line
