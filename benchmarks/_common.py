"""Shared helpers of the benchmark scripts: machine/commit provenance, a local Ray, JSON output."""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from metacpo_rllib.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"


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
