"""Shared helpers of the benchmark scripts: machine/commit provenance, a local Ray, JSON output."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when tracked files differ from it."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True,  # noqa: E731
                                        text=True, check=True).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", "metacpo_rllib")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
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


def provenance() -> dict[str, Any]:
    """Machine, commit and time stamp, stored in every benchmark JSON."""
    return {"machine": machine(), "commit": git_commit(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` plus provenance (unless present) to ``path``; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**provenance(), **data}
    out.write_text(json.dumps(data, indent=2, default=float))
    print(f"wrote {out}")
    return out


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A small private Ray instance (own temp dir, no dashboard), always shut down."""
    import ray

    temp = tempfile.mkdtemp(prefix="mcpo-bench-", dir="/tmp")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp,
             log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Print a plain fixed-width table."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
