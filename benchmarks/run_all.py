"""Runs every benchmark script in turn (one process each), then regenerates docs/BENCHMARKS.md."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (script, stem of its JSON, extra arguments) in run order
SCRIPTS = [("bench_sampling.py", "sampling", []),
           ("bench_sampling.py", "sampling_vector",
            ["--envs-per-runner", "4"]),
           ("bench_lean_rollout.py", "lean_rollout", []),
           ("bench_meta_share.py", "meta_share", ["--fisher-strides", "1", "5"]),
           ("bench_scaling.py", "scaling", []),
           ("bench_profile.py", "profile", []), ("bench_envs.py", "envs", []),
           ("bench_update.py", "update", []), ("bench_cpo_step.py", "cpo_step", []),
           ("bench_fast_step.py", "fast_step", []),
           ("bench_meta_share.py", "meta_share_backends",
            ["--settings", "fisher:closed_form", "fisher:cvxpylayers_dual", "--fisher-strides", "5"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--doc", type=Path, default=HERE.parent / "docs" / "BENCHMARKS.md")
    parser.add_argument("--only", nargs="+", default=None, help="stems to run (default: all)")
    parser.add_argument("--runners", nargs="+", default=None,
                        help="EnvRunner counts for the sampling and scaling benchmarks")
    args = parser.parse_args(argv)
    failed = []
    for script, stem, extra in SCRIPTS:
        if args.only and stem not in args.only:
            continue
        cmd = [sys.executable, str(HERE / script), "--out", str(args.results / f"{stem}.json"), *extra]
        if args.runners and stem in ("sampling", "sampling_vector", "scaling"):
            cmd += ["--runners", *args.runners]
        print(f"\n=== {script} ===", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            failed.append(script)
        print(f"=== {script}: {time.perf_counter() - start:.0f} s", flush=True)
    subprocess.run([sys.executable, str(HERE / "report.py"), "--results", str(args.results),
                    "--out", str(args.doc)], check=True)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
