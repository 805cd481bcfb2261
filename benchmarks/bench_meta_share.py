"""Meta-update share: per meta-iteration, sampling vs Learner time of ``algo.train()`` at the
paper's scale (5 tasks, K = 1, policy (32, 16), 4 PointCircle episodes of 500 steps per task and
round), for each metric × DCO backend. Uses the algorithm's own split
(``results["metacpo"]["time"]``); share = learner_s ÷ (sample_s + learner_s). Target: ≤ 10%.

    .venv/bin/python benchmarks/bench_meta_share.py [--iterations 2] [--runners 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _algo  # noqa: E402
from _common import RESULTS, local_ray, print_table, write_json  # noqa: E402

TARGET = 0.10
SETTINGS = [("fisher", "closed_form"), ("fisher", "cvxpylayers_dual"),
            ("euclidean", "closed_form"), ("euclidean", "cvxpylayers_dual"),
            ("euclidean", "cvxpylayers_primal")]


def steady(rows: list[dict[str, float]], key: str) -> float:
    """Mean of ``key`` over the iterations after the first (all if there is only one)."""
    values = [r[key] for r in (rows[1:] or rows)]
    return statistics.fmean(values)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="PointCircle")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task and round")
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2,
                        help="meta-iterations per setting (the first is reported as warm-up)")
    parser.add_argument("--settings", nargs="+", default=[f"{m}:{b}" for m, b in SETTINGS],
                        help="metric:backend pairs")
    parser.add_argument("--fisher-strides", nargs="+", type=int, default=[None],
                        help="fisher_stride values for the Fisher settings (default: the "
                             "config's)")
    parser.add_argument("--env-config", default=None,
                        help="family overrides as k=v,k=v (smoke tests: horizon=20)")
    parser.add_argument("--out", default=str(RESULTS / "meta_share.json"))
    args = parser.parse_args(argv)
    env_config = _parse_kv(args.env_config)
    rows = []
    with local_ray(num_cpus=max(args.runners, 1) + 1):
        runs = [(setting.split(":"), stride) for setting in args.settings
                for stride in (args.fisher_strides if setting.startswith("fisher:") else [None])]
        for (metric, backend), stride in runs:
            algo = _algo.build(args.family, args.runners, tasks=args.tasks,
                               episodes=args.episodes, metric=metric, backend=backend,
                               env_config=env_config, fisher_stride=stride)
            stride = algo.config.fisher_stride if metric == "fisher" else None
            try:
                its = _algo.train_iterations(algo, args.iterations)
                threads = torch.get_num_threads()  # the (local) Learner's process: this one
            finally:
                algo.stop()
            share = steady(its, "learner_share")
            rows.append({"metric": metric, "backend": backend, "fisher_stride": stride,
                         "iterations": its,
                         "sample_s": steady(its, "sample_s"), "learner_s": steady(its, "learner_s"),
                         "wall_s": steady(its, "wall_s"), "env_steps": its[-1]["env_steps"],
                         "learner_share": share, "meets_target": share <= TARGET,
                         "learner_torch_threads": threads})
    print(f"\nmeta-update share per meta-iteration ({args.family}, {args.tasks} tasks, K = 1, "
          f"{args.runners} EnvRunners; mean after the first iteration), target ≤ {TARGET:.0%}")
    print_table(["metric", "backend", "Fisher stride", "env steps", "sample s", "learner s",
                 "iter wall s", "learner share", "met"],
                [[r["metric"], r["backend"], r["fisher_stride"] or "–", r["env_steps"],
                  r["sample_s"], r["learner_s"],
                  r["wall_s"], f"{r['learner_share']:.1%}", r["meets_target"]] for r in rows])
    report = {"benchmark": "meta_update_share", "target": {"learner_share_max": TARGET},
              "config": vars(args), "rows": rows}
    write_json(args.out, report)
    return report


def _parse_kv(text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, value = item.split("=", 1)
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


if __name__ == "__main__":
    main()
