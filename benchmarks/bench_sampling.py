"""Sampling efficiency: single-process random-policy steps/s of a family's task env vs env
steps/s sampled through MetaCPO's EnvRunners (``MetaCPO.sample_episodes``), per family and R.

ratio = sampled ÷ (R × raw), where raw is the task layer's own rate (``family.make_env``, the
env the EnvRunners step; lean world, faster than the bare safety-gymnasium Builder) with
uniform random actions on the same tasks and episodes per task as the sampled call. Raw and
sampled are measured alternately and the ratio is the median of the per-repeat ratios: this
machine's speed drifts by ±15% within minutes, so two rates taken minutes apart do not
compare. With R = 0 the local EnvRunner samples in the driver process and the ratio uses
R = 1. Target: ≥ 0.8. The EnvRunners sample with ``rllib.episodes.sample_jobs`` (a lean
rollout on their sub-envs, not RLlib's ``sample()``). The 1/5/15-minute load averages before
and after are recorded.

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


def task_raw_rate(env: Any, tasks: list, episodes: int, seed: int) -> float:
    """Random-policy steps/s of ``env`` (one task env, this process) over ``episodes``
    complete episodes of each of ``tasks``, resets and task changes included."""
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    steps, start = 0, time.perf_counter()
    for i, task in enumerate(tasks):
        env.set_task(task)
        for e in range(episodes):
            env.reset(seed=seed + 1000 * i + e)
            while True:
                _, _, terminated, truncated, _ = env.step(
                    rng.uniform(low, high).astype(np.float32))
                steps += 1
                if terminated or truncated:
                    break
    return steps / (time.perf_counter() - start)


def paired_rates(family_name: str, runners: int, jobs_per_runner: int, episodes: int,
                 repeats: int, env_config: dict | None = None, envs_per_runner: int = 1
                 ) -> dict[str, Any]:
    """Raw and sampled rates on the same tasks, measured alternately (raw, sampled, raw,
    ...) so that a machine whose speed drifts affects both alike; ``ratio`` is the median
    of the per-repeat ratios sampled ÷ (R × raw).

    Sampled: env steps/s of ``MetaCPO.sample_episodes`` (θ's weights pushed with every job).
    Raw: random actions on one task env in the driver, the same tasks and episodes per task.
    """
    import _algo

    tasks_n = max(runners, 1) * jobs_per_runner
    env = make_family(family_name, **(env_config or {})).make_env()
    with local_ray(num_cpus=max(runners, 1) + 1):
        algo = _algo.build(family_name, runners, tasks=tasks_n, episodes=episodes,
                           env_config=env_config, envs_per_runner=envs_per_runner)
        try:
            theta = algo._on_learner(lambda learner: learner.theta_weights())
            tasks = algo.sample_train_tasks()
            algo.sample_episodes(tasks, [theta] * len(tasks), 1)  # warm-up (env, module)
            raws, sampled, ratios, steps = [], [], [], 0
            for r in range(repeats):
                raws.append(task_raw_rate(env, tasks, episodes, seed=r))
                start = time.perf_counter()
                out = algo.sample_episodes(tasks, [theta] * len(tasks), episodes)
                wall = time.perf_counter() - start
                steps = sum(o.num_env_steps for o in out if o is not None)
                sampled.append(steps / wall)
                ratios.append(sampled[-1] / (max(runners, 1) * raws[-1]))
        finally:
            algo.stop()
            env.close()
    return {"raw_steps_per_s": statistics.median(raws), "raw_runs": raws,
            "steps_per_s": statistics.median(sampled), "runs": sampled,
            "ratio": statistics.median(ratios), "ratios": ratios, "steps_per_call": steps,
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
    parser.add_argument("--episodes", type=int, default=4,
                        help="episodes per task (MetaCPOConfig's episodes_per_task default)")
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
        for r in args.runners:
            pair = paired_rates(name, r, args.jobs_per_runner, args.episodes, args.repeats,
                                env_config, args.envs_per_runner)
            rows.append({"family": name, "runners": r, "envs_per_runner": args.envs_per_runner,
                         "raw_steps_per_s": pair["raw_steps_per_s"],
                         "sampled_steps_per_s": pair["steps_per_s"], "ratio": pair["ratio"],
                         "meets_target": pair["ratio"] >= TARGET, "paired": pair})
    print(f"\nsampling efficiency: sampled ÷ (R × raw task-layer rate), target ≥ {TARGET}")
    print_table(["family", "R", "raw steps/s", "sampled steps/s", "ratio", "met"],
                [[r["family"], r["runners"], r["raw_steps_per_s"], r["sampled_steps_per_s"],
                  round(r["ratio"], 3), r["meets_target"]] for r in rows])
    report = {"benchmark": "sampling_efficiency", "target": {"ratio_min": TARGET},
              "raw_rate": "task layer (family.make_env, lean world), single process, "
                          "uniform random actions on the sampled run's tasks (the same "
                          "episodes per task), resets included, measured alternately with "
                          "the sampled run; ratio = median of the per-repeat ratios",
              "load_avg": {"before": load_before, "after": os.getloadavg(),
                           "cpus": os.cpu_count()},
              "config": vars(args), "rows": rows}
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
