"""Lean rollouts against the raw random-policy rate of the same task env, in one process, no
Ray: (a) a plain loop (task env + the (32, 16) GaussianMLP policy through torch, one
observation per forward, log-probs kept, actions clipped for the env) and (b) the EnvRunners'
own sampler, ``rollout.rollout`` with the numpy copy of the policy, on one env. The gap
between (b) and ``bench_sampling.py``'s ratio is what the Ray round trips and the runner cost.

    .venv/bin/python benchmarks/bench_lean_rollout.py [--steps 2000] [--repeats 3] [--out PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, print_table, write_json  # noqa: E402
from bench_sampling import SAFETY, horizon_config, raw_rate  # noqa: E402

from metacpo_rllib.envs import make_family  # noqa: E402
from metacpo_rllib.optim import GaussianMLP  # noqa: E402
from metacpo_rllib.optim.policy import log_prob  # noqa: E402
from metacpo_rllib.rollout import numpy_policy, rollout  # noqa: E402


def lean_rate(family_name: str, steps: int, repeats: int, env_config: dict, seed: int = 0
              ) -> dict[str, Any]:
    """Policy-driven steps/s of a bare loop; the per-step data are kept as a sampler would."""
    family = make_family(family_name, **env_config)
    env = family.make_env(family.default_task())
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    policy = GaussianMLP(obs_dim, act_dim)
    rates = []
    for r in range(repeats):
        obs, _ = env.reset(seed=seed + r)
        kept: list[tuple] = []
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                mean, log_std = policy(torch.as_tensor(obs).unsqueeze(0))
                action = mean + log_std.exp() * torch.randn_like(mean)
                logp = log_prob(mean, log_std, action)
                a = action.numpy()[0]
                nxt, reward, terminated, truncated, info = env.step(np.clip(a, low, high))
                kept.append((obs, a, float(logp), reward, info.get("cost", 0.0)))
                obs = nxt
                if terminated or truncated:
                    obs, _ = env.reset()
        rates.append(steps / (time.perf_counter() - start))
    env.close()
    return {"steps_per_s": statistics.median(rates), "runs": rates}


def sampler_rate(family_name: str, steps: int, repeats: int, env_config: dict, seed: int = 0
                 ) -> dict[str, Any]:
    """Steps/s of ``rollout.rollout`` (whole episodes, >= ``steps`` steps) on one env."""
    family = make_family(family_name, **env_config)
    env = family.make_env(family.default_task())
    low, high = env.action_space.low, env.action_space.high
    policy = numpy_policy(GaussianMLP(env.observation_space.shape[0], env.action_space.shape[0]))
    horizon = getattr(family, "max_episode_steps", None) or getattr(family, "horizon", steps)
    episodes = max(1, -(-steps // int(horizon)))
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        data, _, _ = rollout([env], policy, episodes, seed=seed + r, low=low, high=high)
        rates.append(sum(len(d) for d in data) / (time.perf_counter() - start))
    env.close()
    return {"steps_per_s": statistics.median(rates), "runs": rates, "episodes": episodes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=SAFETY)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "lean_rollout.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.families:
        env_config = horizon_config(name, args.horizon)
        raw = raw_rate(name, args.steps, args.repeats, env_config=env_config)
        lean = lean_rate(name, args.steps, args.repeats, env_config)
        sampler = sampler_rate(name, args.steps, args.repeats, env_config)
        rows.append({"family": name, "raw_steps_per_s": raw["steps_per_s"],
                     "lean_steps_per_s": lean["steps_per_s"],
                     "ratio": lean["steps_per_s"] / raw["steps_per_s"],
                     "sampler_steps_per_s": sampler["steps_per_s"],
                     "sampler_ratio": sampler["steps_per_s"] / raw["steps_per_s"],
                     "raw": raw, "lean": lean, "sampler": sampler})
    print("\nlean rollouts (no Ray) vs raw random-policy rate: torch loop and episodes.rollout")
    print_table(["family", "raw steps/s", "torch loop steps/s", "ratio", "rollout steps/s",
                 "ratio"],
                [[r["family"], r["raw_steps_per_s"], r["lean_steps_per_s"], round(r["ratio"], 3),
                  r["sampler_steps_per_s"], round(r["sampler_ratio"], 3)] for r in rows])
    report = {"benchmark": "lean_rollout", "config": vars(args), "rows": rows}
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
