"""Benchmark: the fast step vs safety-gymnasium's stock step, and the batched DCO layer.

Three measurements, each side by side in one run:

* ``env``: random-action steps of each safety family's TaskEnv with ``fast_step`` on and off
  (resets at episode ends included), and the bare physics of the same model
  (``mujoco.mj_step(model, data, nstep=10)``: safety-gymnasium's frameskip), measured
  alternately for ``--rounds`` rounds; CPU seconds of this process, medians. Ratio = bare
  physics time ÷ step time (1.0 = the step costs nothing beyond the physics).
* ``train``: end-to-end ``algo.train()`` throughput (env steps per wall second) of Meta-CPO
  at the default config on PointCircle and PointButton, ``fast_step`` on and off, alternately.
* ``dco``: the cvxpylayers dual layer (forward and backward) for ``--tasks`` CPO instances
  of cases 1-3: one call per instance vs one batched call, and one single-instance call.
* ``first_step``: wall seconds from ``make_env`` to the end of the first step of a fresh
  process (PointButton), fast step with the compiled kernel's cache empty (``cold``: numba
  compiles) and filled (``warm``), in a temporary ``NUMBA_CACHE_DIR``; stock step beside.

    .venv/bin/python benchmarks/bench_fast_step.py [--rounds 5] [--steps 2000]
        [--train-iterations 1] [--skip-train] [--out PATH]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, local_ray, print_table, write_json  # noqa: E402

from metacpo_rllib.envs import make_family  # noqa: E402
from metacpo_rllib.optim import dco  # noqa: E402

FAMILIES = ("PointCircle", "CarCircleHazard", "PointButton")
TRAIN_FAMILIES = ("PointCircle", "PointButton")
TARGET_RATIO, STRETCH_RATIO = 0.5, 0.7
TRAIN_TARGETS = {"PointCircle": 2.0, "PointButton": 4.0}
DCO_TARGET = 2.0  # batched round of 5 tasks ≤ 2× one unbatched call


def _time_steps(env: Any, actions: np.ndarray) -> float:
    """CPU seconds per step over ``actions`` (resets at episode ends included)."""
    start = time.process_time()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return (time.process_time() - start) / len(actions)


def _time_physics(model: Any, steps: int) -> float:
    data = mujoco.MjData(model)
    start = time.process_time()
    for _ in range(steps):
        mujoco.mj_step(model, data, nstep=10)
    return (time.process_time() - start) / steps


def bench_env(rounds: int, steps: int) -> list[dict[str, Any]]:
    rows = []
    for name in FAMILIES:
        task = make_family(name).default_task()
        envs = {fast: make_family(name, fast_step=fast).make_env(task) for fast in (False, True)}
        for seed, env in enumerate(envs.values()):
            env.reset(seed=seed)
        actions = np.random.default_rng(0).uniform(-1, 1, (steps, 2)).astype(np.float32)
        times: dict[str, list[float]] = {"stock": [], "fast": [], "physics": []}
        for _ in range(rounds):
            times["stock"].append(_time_steps(envs[False], actions))
            times["fast"].append(_time_steps(envs[True], actions))
            times["physics"].append(_time_physics(envs[True].sim_task.model, steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"family": name, "us_per_step": {k: v * 1e6 for k, v in med.items()},
                     "ratio_stock": med["physics"] / med["stock"],
                     "ratio_fast": med["physics"] / med["fast"],
                     "speedup": med["stock"] / med["fast"],
                     "met": med["physics"] / med["fast"] >= TARGET_RATIO,
                     "stretch_met": med["physics"] / med["fast"] >= STRETCH_RATIO})
    return rows


def bench_train(iterations: int, rounds: int) -> list[dict[str, Any]]:
    from metacpo_rllib.rllib.config import MetaCPOConfig

    rows = []
    with local_ray(2):
        for name in TRAIN_FAMILIES:
            algos = {fast: MetaCPOConfig().environment(name, env_config={"fast_step": fast})
                     .training(seed=0).build_algo() for fast in (False, True)}
            rates: dict[bool, list[float]] = {False: [], True: []}
            try:
                for _ in range(rounds):
                    for fast, algo in algos.items():
                        for _ in range(iterations):
                            start = time.perf_counter()
                            result = algo.train()
                            wall = time.perf_counter() - start
                            steps = int(result["metacpo"]["env_steps_sampled"])
                            rates[fast].append(steps / wall)
            finally:
                for algo in algos.values():
                    algo.stop()
            stock, fast = statistics.median(rates[False]), statistics.median(rates[True])
            rows.append({"family": name, "env_steps_per_s": {"stock": stock, "fast": fast},
                         "speedup": fast / stock, "target": TRAIN_TARGETS[name],
                         "met": fast / stock >= TRAIN_TARGETS[name]})
    return rows


def _instances(tasks: int, n: int) -> list[tuple]:
    out = []
    for i in range(tasks):
        gen = torch.Generator().manual_seed(i)
        b = torch.randn(n, generator=gen, dtype=torch.float64)
        g = (0.6 * b + torch.randn(n, generator=gen, dtype=torch.float64)).requires_grad_()
        b.requires_grad_()
        t = (-0.6, -0.3, 0.3, 0.6, -0.1)[i % 5]  # cases 1 and 2: the layer solves them
        c = torch.tensor(t * math.sqrt(0.02) * float(b.detach().norm()), dtype=torch.float64,
                         requires_grad=True)
        out.append((g, b, c))
    return out


def _dual_instance(g: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple:
    """A dual-layer instance with H = I (v = g, w = b), its forms built afresh."""
    return (g, b, g, b, g @ g, g @ b, b @ b, c, torch.tensor(0.01, dtype=torch.float64), None)


def _timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_dco(tasks: int, n: int, repeats: int) -> dict[str, Any]:
    base = _instances(tasks, n)

    def backward(results: list) -> None:
        sum(alpha + beta for alpha, beta, _, _ in results).backward()

    def unbatched() -> None:
        backward([dco.dual_step(*_dual_instance(*inst)) for inst in base])

    def batched() -> None:
        backward(dco.dual_steps([_dual_instance(*inst) for inst in base]))

    def single() -> None:
        backward([dco.dual_step(*_dual_instance(*base[0]))])

    dco.dual_layer()  # built once, outside the timings
    batched()
    per = {"single_call_s": _timed(single, repeats),
           "unbatched_round_s": _timed(unbatched, repeats),
           "batched_round_s": _timed(batched, repeats)}
    per["batched_vs_single"] = per["batched_round_s"] / per["single_call_s"]
    per["unbatched_vs_batched"] = per["unbatched_round_s"] / per["batched_round_s"]
    per["met"] = per["batched_vs_single"] <= DCO_TARGET
    per.update(tasks=tasks, n=n, repeats=repeats, target=DCO_TARGET)
    return per


_FIRST_STEP = """
import sys, time, numpy as np
from metacpo_rllib.envs import make_family
start = time.perf_counter()
env = make_family("PointButton", fast_step=sys.argv[1] == "fast").make_env()
env.reset(seed=0)
env.step(np.zeros(2, dtype=np.float32))
print(time.perf_counter() - start)
"""


def bench_first_step() -> dict[str, float]:
    """Wall seconds from ``make_env`` to the end of the first step in a fresh process
    (PointButton): fast step with the kernel cache empty (numba compiles) and filled, and
    the stock step."""
    root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        out = {}
        for label, mode in (("cold", "fast"), ("warm", "fast"), ("stock", "stock")):
            run = subprocess.run([sys.executable, "-c", _FIRST_STEP, mode], env=env,
                                 check=True, capture_output=True, text=True)
            out[label] = float(run.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--train-iterations", type=int, default=1)
    parser.add_argument("--train-rounds", type=int, default=4)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "fast_step.json")
    args = parser.parse_args(argv)

    env = bench_env(args.rounds, args.steps)
    print_table(["family", "stock µs", "fast µs", "physics µs", "stock ÷ physics",
                 "fast ÷ physics", "speed-up"],
                [[r["family"], r["us_per_step"]["stock"], r["us_per_step"]["fast"],
                  r["us_per_step"]["physics"], r["ratio_stock"], r["ratio_fast"], r["speedup"]]
                 for r in env])
    first = bench_first_step()
    print(f"make_env to first step, fresh process: fast {first['cold']:.2f} s (cold kernel "
          f"cache), {first['warm']:.2f} s (warm); stock {first['stock']:.2f} s")
    dco_row = bench_dco(args.tasks, 1500, repeats=7)
    print_table(["DCO", "single call s", "unbatched round s", "batched round s",
                 "batched ÷ single"],
                [[f"{args.tasks} tasks", dco_row["single_call_s"], dco_row["unbatched_round_s"],
                  dco_row["batched_round_s"], dco_row["batched_vs_single"]]])
    train = [] if args.skip_train else bench_train(args.train_iterations, args.train_rounds)
    if train:
        print_table(["family", "stock steps/s", "fast steps/s", "speed-up"],
                    [[r["family"], r["env_steps_per_s"]["stock"], r["env_steps_per_s"]["fast"],
                      r["speedup"]] for r in train])
    data = {"config": vars(args) | {"out": str(args.out)}, "env": env, "dco": dco_row,
            "first_step_s": first,
            "train": train, "targets": {"ratio": TARGET_RATIO, "stretch": STRETCH_RATIO}}
    write_json(args.out, data)
    return data


if __name__ == "__main__":
    main()
