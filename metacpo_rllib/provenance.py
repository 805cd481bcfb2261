"""Where measured numbers come from: the source commit, the machine and a UTC time stamp."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

#: The checkout this package was imported from (for ``git``).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def git_commit(short: bool = False, mark_dirty: bool = False) -> str:
    """HEAD of the source checkout (``unknown`` outside git). ``mark_dirty`` appends
    ``+dirty`` when tracked files of the package differ from HEAD."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", *(["--short"] if short else []), "HEAD")
        if mark_dirty and git("status", "--porcelain", "--untracked-files=no", "--",
                              "metacpo_rllib"):
            commit += "+dirty"
        return commit or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """The machine: platform, Python, CPU model and count (all and usable), memory, load."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem_gib = round(mem_kb / 2**20, 1)
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpus": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "mem_gib": mem_gib, "hostname": platform.node(),
            "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def provenance() -> dict[str, Any]:
    """Machine, short commit (``+dirty`` marked) and time stamp."""
    return {"machine": machine(), "commit": git_commit(short=True, mark_dirty=True),
            "utc": utc_now()}
