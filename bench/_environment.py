"""Facts about the machine and the software a run measured, so figures can be compared across runs."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from _targets import LITELLM_VENV, REPO_DIR


def describe_environment(
    load_at_start: tuple[float, float, float], litellm_venv: Path = LITELLM_VENV
) -> tuple[tuple[str, str], ...]:
    """(label, value) pairs for the report: machine, kernel, load and each measured program's version."""
    return (
        ("CPU", f"{os.cpu_count()} x {_cpu_model()} (nproc {len(os.sched_getaffinity(0))})"),
        ("Memory", _memory_total()),
        ("Kernel", platform.release()),
        # Other work on the box skews every column; the load averages show whether it was idle.
        ("Load average at start (1/5/15 min)", _loads(load_at_start)),
        ("Load average at end (1/5/15 min)", _loads(os.getloadavg())),
        ("Ferryman", f"{_package_version('ferryman')} at {_git_commit()}"),
        ("Python (Ferryman)", platform.python_version()),
        ("uvicorn", _package_version("uvicorn")),
        ("nginx", _command_output(["nginx", "-v"], r"nginx/(\S+)")),
        ("wrk", _command_output(["wrk", "--version"], r"wrk (\S+)")),
        ("LiteLLM", _litellm_version(litellm_venv)),
    )


def _loads(loads: tuple[float, float, float]) -> str:
    return " / ".join(f"{load:.2f}" for load in loads)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_total() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    return "unknown"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    head = _run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"]).strip() or "(no commit yet)"
    dirty = _run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"]).strip()
    return f"commit {head}{' + uncommitted changes' if dirty else ''}"


def _litellm_version(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        return "not installed"
    script = "import importlib.metadata as m; print(m.version('litellm'))"
    return _run([str(python), "-c", script]).strip() or "unknown"


def _command_output(argv: list[str], pattern: str) -> str:
    match = re.search(pattern, _run(argv, require_success=False))
    return match.group(1) if match else "unknown"


def _run(argv: list[str], require_success: bool = True) -> str:
    """Output of a short, read-only command (stderr too: `nginx -v` writes there); empty if it failed.

    `wrk --version` exits 1 after printing its version, hence `require_success=False` for banners.
    """
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr if done.returncode == 0 or not require_success else ""
