"""Scaling: meta-iteration time vs number of EnvRunners, and the parallel efficiency of the
sampling part, eff(R) = sample_s(1) ÷ (R × sample_s(R)) (R = 0: the driver's local runner).

Tasks go round-robin to runners, so with T tasks the best possible efficiency is
T ÷ (R × ⌈T/R⌉) (reported as ``ideal_efficiency``).

    .venv/bin/python benchmarks/bench_scaling.py [--runners 0 1 2] [--iterations 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _algo  # noqa: E402
from _common import RESULTS, local_ray, print_table, write_json  # noqa: E402
from bench_meta_share import _parse_kv, steady  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--family", default="PointCircle")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--metric", default="fisher")
    parser.add_argument("--backend", default="closed_form")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--env-config", default=None, help="family overrides as k=v,k=v")
    parser.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = parser.parse_args(argv)
    env_config = _parse_kv(args.env_config)
    rows = []
    for r in args.runners:
        with local_ray(num_cpus=max(r, 1) + 1):
            algo = _algo.build(args.family, r, tasks=args.tasks, episodes=args.episodes,
                               metric=args.metric, backend=args.backend, env_config=env_config)
            try:
                its = _algo.train_iterations(algo, args.iterations)
            finally:
                algo.stop()
        rows.append({"runners": r, "iterations": its, "wall_s": steady(its, "wall_s"),
                     "sample_s": steady(its, "sample_s"), "learner_s": steady(its, "learner_s"),
                     "env_steps": its[-1]["env_steps"]})
    base = next((row["sample_s"] for row in rows if row["runners"] == 1), None)
    for row in rows:
        r = row["runners"]
        row["sample_steps_per_s"] = row["env_steps"] / row["sample_s"]
        row["efficiency"] = (base / (r * row["sample_s"])) if base and r >= 1 else None
        row["ideal_efficiency"] = (args.tasks / (r * math.ceil(args.tasks / r))) if r >= 1 \
            else None
    print(f"\nscaling ({args.family}, {args.tasks} tasks × {args.episodes} episodes, K = 1, "
          f"{args.metric}/{args.backend}; mean after the first iteration)")
    print_table(["R", "iter wall s", "sample s", "learner s", "sampled steps/s",
                 "efficiency", "ideal"],
                [[row["runners"], row["wall_s"], row["sample_s"], row["learner_s"],
                  row["sample_steps_per_s"], _opt(row["efficiency"]),
                  _opt(row["ideal_efficiency"])] for row in rows])
    report = {"benchmark": "scaling", "config": vars(args), "rows": rows,
              "efficiency_definition": "sample_s(1) / (R * sample_s(R))"}
    write_json(args.out, report)
    return report


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
