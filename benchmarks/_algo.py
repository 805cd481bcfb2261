"""Builds MetaCPO algorithms for the benchmarks and reads the per-iteration time split."""
from __future__ import annotations

import time
from typing import Any, Optional

from metacpo_rllib.rllib.config import MetaCPOConfig


def build(family: str, runners: int, *, tasks: int = 5, episodes: int = 4, metric: str = "fisher",
          backend: str = "closed_form", env_config: Optional[dict] = None, seed: int = 0,
          envs_per_runner: int = 1, fisher_stride: Optional[int] = None) -> Any:
    """A MetaCPO algorithm (K = 1, policy (32, 16)) on ``family`` with ``runners`` EnvRunners,
    each stepping ``envs_per_runner`` sub-envs (RLlib's ``num_envs_per_env_runner``);
    ``fisher_stride`` None keeps the config's default."""
    config = (MetaCPOConfig()
              .environment(family, env_config=dict(env_config or {}))
              .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs_per_runner)
              .training(tasks_per_iteration=tasks, episodes_per_task=episodes, inner_steps=1,
                        metric=metric, backend=backend, seed=seed,
                        inner_delta=0.01 if metric == "fisher" else 0.005))
    if fisher_stride is not None:
        config.training(fisher_stride=fisher_stride)
    return config.build_algo()


def train_iterations(algo: Any, iterations: int) -> list[dict[str, float]]:
    """Run ``iterations`` of ``algo.train()``; per iteration the algorithm's own time split
    (``results["metacpo"]["time"]``), its env steps and the wall time of ``train()``."""
    rows = []
    for _ in range(iterations):
        start = time.perf_counter()
        result = algo.train()
        wall = time.perf_counter() - start
        m = result["metacpo"]
        sample_s, learner_s = float(m["time"]["sample_s"]), float(m["time"]["learner_s"])
        rows.append({"wall_s": wall, "sample_s": sample_s, "learner_s": learner_s,
                     "other_s": wall - sample_s - learner_s,
                     "env_steps": int(m["env_steps_sampled"]),
                     "learner_share": learner_s / (sample_s + learner_s),
                     "learner_share_of_wall": learner_s / wall,
                     "line_search_steps": float(m["update"]["line_search_steps"])})
    return rows
