"""Sampling efficiency: single-process random-policy steps/s of a family's task env vs env
steps/s sampled through MetaCPO's EnvRunners (``MetaCPO.sample_episodes``), per family and R.

ratio = sampled ÷ (R × raw), where raw is the task layer's own rate (``family.make_env``, the
env the EnvRunners step; lean world, faster than the bare safety-gymnasium Builder). With R = 0
the local EnvRunner samples in the driver process and the ratio uses R = 1. Target: ≥ 0.8.
The EnvRunners sample with ``rllib.episodes.sample_jobs`` (a lean rollout on their sub-envs,
not RLlib's ``sample()``). The 1/5/15-minute load averages before and after are recorded
(the ratio is taken within one run, but a loaded machine slows the runners more than raw).

    .venv/bin/python benchmarks/bench_sampling.py [--runners 1 2] [--families ...] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, local_ray, print_table, write_json  # noqa: E402

from metacpo_rllib.envs import make_family  # noqa: E402

TARGET = 0.8
SAFETY = ["PointCircle", "CarCircleHazard", "PointButton"]


def raw_rate(family_name: str, steps: int, repeats: int, seed: int = 0,
             env_config: dict | None = None) -> dict[str, Any]:
    """Random-policy steps/s of one task env in this process (resets included)."""
    family = make_family(family_name, **(env_config or {}))
    env = family.make_env(family.default_task())
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    actions = rng.uniform(low, high, (steps, low.shape[0])).astype(np.float32)
    walls, cpus = [], []
    for r in range(repeats):
        env.reset(seed=seed + r)
        wall, cpu = time.perf_counter(), time.process_time()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        walls.append(steps / (time.perf_counter() - wall))
        cpus.append(steps / (time.process_time() - cpu))
    env.close()
    return {"steps_per_s": statistics.median(walls), "steps_per_cpu_s": statistics.median(cpus),
            "runs": walls, "steps": steps, "episode_steps": getattr(family, "max_episode_steps", getattr(family, "horizon", None))}


def sampled_rate(family_name: str, runners: int, jobs_per_runner: int, episodes: int,
                 repeats: int, env_config: dict | None = None, envs_per_runner: int = 1
                 ) -> dict[str, Any]:
    """Env steps/s of ``MetaCPO.sample_episodes`` (θ's weights pushed with every job)."""
    import _algo

    tasks_n = max(runners, 1) * jobs_per_runner
    with local_ray(num_cpus=max(runners, 1) + 1):
        algo = _algo.build(family_name, runners, tasks=tasks_n, episodes=episodes,
                           env_config=env_config, envs_per_runner=envs_per_runner)
        try:
            theta = algo._learner_call("theta_weights")
            tasks = algo.sample_train_tasks()
            algo.sample_episodes(tasks, [theta] * len(tasks), 1)  # warm-up (env, module)
            rates, steps = [], 0
            for _ in range(repeats):
                start = time.perf_counter()
                out = algo.sample_episodes(tasks, [theta] * len(tasks), episodes)
                wall = time.perf_counter() - start
                steps = sum(o["num_env_steps"] for o in out if o is not None)
                rates.append(steps / wall)
        finally:
            algo.stop()
    return {"steps_per_s": statistics.median(rates), "runs": rates, "steps_per_call": steps,
            "tasks": tasks_n, "episodes_per_task": episodes}


def horizon_config(family: str, horizon: int | None) -> dict[str, int]:
    """Family override setting the episode length (``horizon`` for the numpy CMDPs)."""
    if horizon is None:
        return {}
    return {("max_episode_steps" if family in SAFETY else "horizon"): horizon}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=SAFETY)
    parser.add_argument("--runners", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--jobs-per-runner", type=int, default=2,
                        help="tasks per EnvRunner per sampling call")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per task")
    parser.add_argument("--raw-steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--envs-per-runner", type=int, default=1,
                        help="sub-envs per EnvRunner (num_envs_per_env_runner)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="override max_episode_steps (smoke tests)")
    parser.add_argument("--out", default=str(RESULTS / "sampling.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    for name in args.families:
        env_config = horizon_config(name, args.horizon)
        raw = raw_rate(name, args.raw_steps, args.repeats, env_config=env_config)
        for r in args.runners:
            sampled = sampled_rate(name, r, args.jobs_per_runner, args.episodes, args.repeats,
                                   env_config, args.envs_per_runner)
            ratio = sampled["steps_per_s"] / (max(r, 1) * raw["steps_per_s"])
            rows.append({"family": name, "runners": r, "envs_per_runner": args.envs_per_runner,
                         "raw_steps_per_s": raw["steps_per_s"],
                         "raw_steps_per_cpu_s": raw["steps_per_cpu_s"],
                         "sampled_steps_per_s": sampled["steps_per_s"], "ratio": ratio,
                         "meets_target": ratio >= TARGET, "raw": raw, "sampled": sampled})
    print(f"\nsampling efficiency: sampled ÷ (R × raw task-layer rate), target ≥ {TARGET}")
    print_table(["family", "R", "raw steps/s", "sampled steps/s", "ratio", "met"],
                [[r["family"], r["runners"], r["raw_steps_per_s"], r["sampled_steps_per_s"],
                  round(r["ratio"], 3), r["meets_target"]] for r in rows])
    report = {"benchmark": "sampling_efficiency", "target": {"ratio_min": TARGET},
              "raw_rate": "task layer (family.make_env, lean world), single process, "
                          "uniform random actions, resets included",
              "load_avg": {"before": load_before, "after": os.getloadavg(),
                           "cpus": os.cpu_count()},
              "config": vars(args), "rows": rows}
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
