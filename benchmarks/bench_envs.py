"""Random-policy steps/s of the safety families: bare safety-gymnasium vs the task layer.

For each safety family it times, from the first reset on and including the resets at episode
ends, the same pre-drawn uniform random actions through

* ``bare``: the stock registered safety-gymnasium env the family derives from
  (``SafetyPointCircle1-v0``, ``SafetyCarCircle1-v0``, ``SafetyPointButton1-v0``), as a raw
  ``Builder`` (6-tuple step, float64 obs, no wrappers);
* ``bare_layout``: a raw ``Builder`` laid out as the family's default train task (same objects
  as the layer, stock World);
* ``layer``: ``make_family(name).make_env()``, the TaskEnv as RLlib uses it (lean world);
* ``layer_full_world``: the TaskEnv with ``lean_world=False`` (isolates the wrapper's cost).

Each configuration runs ``--repeats`` times, interleaved; medians are reported, as steps per
wall-clock second and per CPU second of this process (the JSON ratios use CPU time, which other
processes sharing the cores disturb far less). Prints tables and writes JSON to ``--out``
(default ``benchmarks/results/envs.json``).

    .venv/bin/python benchmarks/bench_envs.py [--episodes 2] [--repeats 5] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from typing import Any, Callable

import numpy as np

import sys as _sys
_sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from metacpo_rllib.provenance import machine, provenance  # noqa: E402

from metacpo_rllib.envs import compat, make_family  # noqa: E402
from metacpo_rllib.envs.safety import make_bare_env  # noqa: E402

compat.apply()
import safety_gymnasium  # noqa: E402  (after compat.apply)

STOCK_IDS = {"PointCircle": "SafetyPointCircle1-v0", "CarCircleHazard": "SafetyCarCircle1-v0",
             "PointButton": "SafetyPointButton1-v0"}


def _stock(env_id: str) -> Any:
    with warnings.catch_warnings():  # gymnasium Box: float32 bounds cast to a float64 dtype
        warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
        return safety_gymnasium.make(env_id).unwrapped  # the Builder, without SafeTimeLimit


def time_env(env: Any, actions: np.ndarray, seed: int) -> tuple[float, float]:
    """(wall, CPU) steps/s over ``actions``; resets at episode ends included, first excluded."""
    env.reset(seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        out = env.step(action)
        if out[-2] or out[-3]:  # truncated or terminated (same slots in 5- and 6-tuples)
            env.reset()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(actions) / wall, len(actions) / cpu


def bench_family(name: str, episodes: int, repeats: int, seed: int) -> dict[str, Any]:
    family = make_family(name)
    task = family.default_task()
    steps = episodes * family.max_episode_steps
    makers: dict[str, tuple[Callable[[], Any], bool]] = {
        "bare": (lambda: _stock(STOCK_IDS[name]), True),
        "bare_layout": (lambda: make_bare_env(family, task), True),
        "layer": (lambda: family.make_env(task), False),
        "layer_full_world": (lambda: make_family(name, lean_world=False).make_env(task), False),
    }
    envs = {key: (make(), six) for key, (make, six) in makers.items()}
    low, high = envs["layer"][0].action_space.low, envs["layer"][0].action_space.high
    actions64 = np.random.default_rng(seed).uniform(low, high, (steps, low.shape[0]))
    actions32 = actions64.astype(np.float32)
    runs: dict[str, list[tuple[float, float]]] = {key: [] for key in envs}
    for _ in range(repeats):
        for key, (env, six) in envs.items():
            runs[key].append(time_env(env, actions64 if six else actions32, seed))
    wall = {key: statistics.median(w for w, _ in values) for key, values in runs.items()}
    cpu = {key: statistics.median(c for _, c in values) for key, values in runs.items()}
    return {
        "family": name,
        "bare_env_id": STOCK_IDS[name],
        "task": task.to_dict(),
        "steps_per_run": steps,
        "episode_steps": family.max_episode_steps,
        "steps_per_s": {key: round(value, 1) for key, value in wall.items()},
        "steps_per_cpu_s": {key: round(value, 1) for key, value in cpu.items()},
        "runs_steps_per_s": {key: [round(w, 1) for w, _ in values] for key, values in runs.items()},
        "runs_steps_per_cpu_s": {key: [round(c, 1) for _, c in values]
                                 for key, values in runs.items()},
        # ratios on CPU time: robust to other processes sharing the cores (wall ratios in
        # "steps_per_s" agree when the machine is quiet)
        "ratio_layer_vs_bare": round(cpu["layer"] / cpu["bare"], 3),
        "ratio_layer_vs_bare_layout": round(cpu["layer"] / cpu["bare_layout"], 3),
        "ratio_wrapper_only": round(cpu["layer_full_world"] / cpu["bare_layout"], 3),
        "ratio_layer_vs_bare_wall": round(wall["layer"] / wall["bare"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/envs.json")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="+", default=list(STOCK_IDS), choices=list(STOCK_IDS))
    args = parser.parse_args()

    results = [bench_family(name, args.episodes, args.repeats, args.seed)
               for name in args.families]
    header = (f"{'family':<16}{'bare env':<24}{'bare':>7}{'bare_layout':>13}{'layer':>7}"
              f"{'layer_full':>12}{'layer/bare':>12}{'layer/bare_layout':>19}{'wrapper only':>14}")
    for unit, key in (("wall s", "steps_per_s"), ("CPU s", "steps_per_cpu_s")):
        print(f"\nrandom-policy steps per {unit} (median of {args.repeats} runs, resets included)")
        print(header)
        print("-" * len(header))
        for r in results:
            s = r[key]
            ratios = ((s["layer"] / s["bare"]), (s["layer"] / s["bare_layout"]),
                      (s["layer_full_world"] / s["bare_layout"]))
            print(f"{r['family']:<16}{r['bare_env_id']:<24}{s['bare']:>7.0f}"
                  f"{s['bare_layout']:>13.0f}{s['layer']:>7.0f}{s['layer_full_world']:>12.0f}"
                  f"{ratios[0]:>12.2f}{ratios[1]:>19.2f}{ratios[2]:>14.2f}")

    report = {
        "benchmark": "safety env steps/s, bare safety-gymnasium vs task layer",
        "config": vars(args),
        "commit": provenance()["commit"], "utc": provenance()["utc"],
        "machine": {**machine(), "numpy": np.__version__,
                    "safety_gymnasium": safety_gymnasium.__version__},
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
