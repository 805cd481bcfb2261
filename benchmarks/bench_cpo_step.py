"""Benchmark: forward+backward time of one CPO step per backend, and how far their answers differ.

Usage: ``python benchmarks/bench_cpo_step.py [--sizes 1000 1500 10000 100000] [--out PATH]``.
Each timed call is ``cpo_step(g, b, c, δ, backend=…)`` followed by a backward pass of
``cotᵀx`` to g, b, c (Euclidean metric, so all three backends solve the same problem), on an
instance whose cost constraint is active (case 2, ν* > 0). The primal cone program is only
built up to a build-time budget (its build grows ~n²); bigger sizes are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import sys as _sys
_sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from metacpo_rllib.provenance import machine, provenance  # noqa: E402

from metacpo_rllib.optim import dco  # noqa: E402
from metacpo_rllib.optim.cpo import BACKENDS, cpo_step  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cpo_step.json"
POLICY_N = 1500


def make_instance(n: int, seed: int = 0, delta: float = 0.01):
    """g, b correlated (so the TRPO step violates the constraint), c < 0: case 2, active."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    g = 0.6 * b + torch.randn(n, generator=gen, dtype=torch.float64)
    c = -0.3 * math.sqrt(2 * delta) * float(b.norm())
    cot = torch.randn(n, generator=gen, dtype=torch.float64)
    return g, b, c, delta, cot


def step_and_backward(backend: str, g, b, c, delta, cot):
    """One forward+backward; returns (step, (dg, db, dc))."""
    g, b = g.clone().requires_grad_(), b.clone().requires_grad_()
    c = torch.tensor(c, dtype=g.dtype, requires_grad=True)
    st = cpo_step(g, b, c, delta, backend=backend)
    grads = torch.autograd.grad(st.x @ cot, (g, b, c), materialize_grads=True)
    return st, grads


def time_backend(backend: str, inst, repeats: int, min_time_s: float) -> dict:
    """Median/min wall time of forward+backward after two warm-up calls."""
    for _ in range(2):
        step_and_backward(backend, *inst)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time_s
                                   and len(times) < 50 * repeats):
        t0 = time.perf_counter()
        step_and_backward(backend, *inst)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "calls": len(times)}


def run(sizes: list[int], repeats: int, min_time_s: float, primal_budget_s: float) -> dict:
    rows = []
    build_per_n2 = None  # seconds / n², from the largest primal layer built so far
    for n in sizes:
        inst = make_instance(n)
        row: dict = {"n": n, "backends": {}, "notes": []}
        ref_step, ref_grads = step_and_backward("closed_form", *inst)
        row["case"] = ref_step.case
        row["nu"] = float(ref_step.nu.detach())
        xs = {}
        for backend in BACKENDS:
            if backend == "cvxpylayers_primal":
                predicted = build_per_n2 * n * n if build_per_n2 else 0.0
                if predicted > primal_budget_s:
                    row["notes"].append(
                        f"cvxpylayers_primal skipped: predicted layer build {predicted:.0f} s "
                        f"(~n², from the largest build) exceeds the {primal_budget_s:.0f} s budget")
                    continue
                dco.primal_layer.cache_clear()
                t0 = time.perf_counter()
                dco.primal_layer(n)
                build_s = time.perf_counter() - t0
                build_per_n2 = build_s / (n * n)
            res = time_backend(backend, inst, repeats if n < 50_000 else max(3, repeats // 4),
                               min_time_s)
            if backend == "cvxpylayers_primal":
                res["build_s"] = build_s
            st, grads = step_and_backward(backend, *inst)
            xs[backend] = st.x.detach()
            res["max_abs_dx_vs_closed_form"] = float((st.x - ref_step.x).detach().abs().max())
            res["max_rel_dgrad_vs_closed_form"] = max(
                float((a - r).abs().max()) / (1.0 + float(r.abs().max()))
                for a, r in zip(grads, ref_grads))
            res["case"] = st.case
            row["backends"][backend] = res
        row["max_abs_dx_between_backends"] = max(
            float((xs[a] - xs[b]).abs().max()) for a in xs for b in xs)
        primal = row["backends"].get("cvxpylayers_primal")
        if primal:
            for backend in ("closed_form", "cvxpylayers_dual"):
                row["backends"][backend]["speedup_vs_primal"] = (
                    primal["median_ms"] / row["backends"][backend]["median_ms"])
        rows.append(row)
        print_row(row)
        dco.primal_layer.cache_clear()
    return {"rows": rows}


HEADER = (f"{'n':>7} {'backend':<19} {'median ms':>10} {'min ms':>9} {'build s':>8} "
          f"{'max|dx|':>9} {'max rel dgrad':>13} {'speedup':>8}")


def print_row(row: dict) -> None:
    for backend, res in row["backends"].items():
        build = f"{res['build_s']:.2f}" if "build_s" in res else "-"
        speed = f"{res['speedup_vs_primal']:.0f}x" if "speedup_vs_primal" in res else "-"
        print(f"{row['n']:>7} {backend:<19} {res['median_ms']:>10.3f} {res['min_ms']:>9.3f} "
              f"{build:>8} {res['max_abs_dx_vs_closed_form']:>9.1e} "
              f"{res['max_rel_dgrad_vs_closed_form']:>13.1e} {speed:>8}", flush=True)
    print(f"{row['n']:>7} max |x_a - x_b| over all backend pairs: "
          f"{row['max_abs_dx_between_backends']:.1e}", flush=True)
    for note in row["notes"]:
        print(f"{row['n']:>7} note: {note}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, POLICY_N, 10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per backend (at least)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="keep timing a backend for at least this many seconds")
    ap.add_argument("--primal-build-budget", type=float, default=60.0,
                    help="skip the primal layer where its predicted build time exceeds this (s)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(HEADER)
    result = run(args.sizes, args.repeats, args.min_time, args.primal_build_budget)
    result["config"] = {
        "sizes": args.sizes, "repeats": args.repeats, "min_time_s": args.min_time,
        "primal_build_budget_s": args.primal_build_budget, "threads": args.threads,
        "dtype": "float64", "metric": "euclidean", "delta": 0.01,
        "dual_solver_args": dco.DUAL_SOLVER_ARGS, "primal_solver_args": dco.PRIMAL_SOLVER_ARGS,
        "timed": "cpo_step + autograd.grad(cotᵀx, (g, b, c))",
    }
    result["commit"] = provenance()["commit"]
    result["utc"] = provenance()["utc"]
    result["machine"] = {**machine(), "platform": platform.platform(), "python": platform.python_version(),
                         "torch": torch.__version__, "cpu_count": os.cpu_count(),
                         "loadavg_at_end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
