"""Profile of one meta-iteration with everything in one process (local EnvRunner and Learner),
under cProfile: where the sampling time and the Learner time go, grouped into named parts.

The parts are the cumulative times of chosen functions (a function that calls itself counts
once); ``top_cumulative`` / ``top_self`` list the heaviest functions for anything they miss.

    .venv/bin/python benchmarks/bench_profile.py [--family PointCircle] [--episodes 4] [--out PATH]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _algo  # noqa: E402
from _common import RESULTS, local_ray, print_table, write_json  # noqa: E402
from bench_meta_share import _parse_kv  # noqa: E402

#: part name -> (file name ends with, function name); ordered roughly outermost first.
PARTS: dict[str, tuple[str, str]] = {
    "sample_episodes (driver)": ("rllib/algorithm.py", "sample_episodes"),
    "runner rollout": ("/rollout.py", "rollout"),
    "  task env step": ("envs/safety.py", "step"),
    "    mujoco mj_step": ("~", "mj_step"),
    "  policy forward": ("/rollout.py", "policy"),
    "episode arrays (EpisodeData)": ("/rollout.py", "data"),
    "runner.set_state (weights)": ("single_agent_env_runner.py", "set_state"),
    "runner.get_metrics": ("single_agent_env_runner.py", "get_metrics"),
    "set_task": ("envs/safety.py", "set_task"),
    "learner add_round": ("rllib/learner.py", "add_round"),
    "  make_batch": ("optim/batch.py", "make_batch"),
    "  inner_steps (all tasks)": ("optim/meta.py", "inner_steps"),
    "learner meta_step": ("rllib/learner.py", "meta_step"),
    "  meta_update": ("optim/meta.py", "meta_update"),
    "    meta_gradients": ("optim/meta.py", "meta_gradients"),
    "    line search": ("optim/line_search.py", "line_search"),
    "    CPO steps": ("optim/cpo.py", "step_from_solution"),
    "    conjugate gradient": ("optim/linalg.py", "conjugate_gradient"),
    "sync_weights": ("env_runner_group.py", "sync_weights"),
    "training_step (whole iteration)": ("rllib/algorithm.py", "training_step"),
}


def find(stats: pstats.Stats, file_end: str, func: str) -> tuple[float, int]:
    """(cumulative s, primitive calls) of the heaviest function matching (file, name)."""
    best = (0.0, 0)
    for (path, _, name), (cc, _, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if name == func and path.replace("\\", "/").endswith(file_end) and ct > best[0]:
            best = (ct, cc)
    return best


def top(stats: pstats.Stats, key: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for (path, line, name), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore
        rows.append({"function": f"{Path(path).name}:{line}:{name}", "calls": nc,
                     "self_s": tt, "cumulative_s": ct})
    rows.sort(key=lambda r: r["self_s" if key == "self" else "cumulative_s"], reverse=True)
    return rows[:n]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="PointCircle")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--metric", default="fisher")
    parser.add_argument("--backend", default="closed_form")
    parser.add_argument("--env-config", default=None, help="family overrides as k=v,k=v")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=str(RESULTS / "profile.json"))
    args = parser.parse_args(argv)
    with local_ray(num_cpus=1):
        algo = _algo.build(args.family, 0, tasks=args.tasks, episodes=args.episodes,
                           metric=args.metric, backend=args.backend,
                           env_config=_parse_kv(args.env_config))
        try:
            _algo.train_iterations(algo, 1)  # warm-up, unprofiled
            unprofiled = _algo.train_iterations(algo, 1)[0]
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            profiled = _algo.train_iterations(algo, 1)[0]
            profiler.disable()
            total = time.perf_counter() - start
        finally:
            algo.stop()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    parts = []
    for name, (file_end, func) in PARTS.items():
        if file_end == "~":
            ct, calls = _builtin(stats, func)
        else:
            ct, calls = find(stats, file_end, func)
        parts.append({"part": name, "cumulative_s": ct, "calls": calls,
                      "share_of_iteration": ct / total})
    steps = profiled["env_steps"]
    print(f"\nprofile of one meta-iteration ({args.family}, {args.tasks} tasks × {args.episodes} "
          f"episodes, K = 1, {args.metric}/{args.backend}, local runner + learner): "
          f"{total:.2f} s profiled ({unprofiled['wall_s']:.2f} s unprofiled), {steps} env steps")
    print_table(["part", "cum s", "calls", "share", "µs/env step"],
                [[p["part"], round(p["cumulative_s"], 3), p["calls"],
                  f"{p['share_of_iteration']:.1%}", round(1e6 * p["cumulative_s"] / steps, 1)]
                 for p in parts])
    report = {"benchmark": "profile", "config": vars(args), "profiled_wall_s": total,
              "unprofiled": unprofiled, "profiled": profiled, "env_steps": steps, "parts": parts,
              "top_cumulative": top(stats, "cum", args.top), "top_self": top(stats, "self", args.top)}
    print("\nheaviest functions by self time")
    print_table(["function", "calls", "self s", "cum s"],
                [[r["function"][-60:], r["calls"], round(r["self_s"], 3),
                  round(r["cumulative_s"], 3)] for r in report["top_self"][:15]])
    write_json(args.out, report)
    return report


def _builtin(stats: pstats.Stats, name: str) -> tuple[float, int]:
    for (path, _, func), (cc, _, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if path == "~" and name in func:
            return ct, cc
    return 0.0, 0


if __name__ == "__main__":
    main()
