"""Runner-side sampling: set task and weights on an EnvRunner, sample, return compact EpisodeData."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.core.columns import Columns

from metacpo_rllib.optim import EpisodeData


def episode_to_data(episode: Any) -> tuple[EpisodeData, list[int]]:
    """A finished SingleAgentEpisode -> (EpisodeData, task ids seen in its step infos).

    obs[t] is where action t was taken (the final observation is dropped); costs are
    ``info["cost"]`` of the step infos, i.e. ``infos[1:]`` (infos[0] comes from reset).
    Arrays are copied, so the episode may be mutated or dropped afterwards.
    """
    n = len(episode)
    infos = episode.get_infos()[1:]
    data = EpisodeData(
        obs=np.array(episode.get_observations(slice(0, n)), dtype=np.float32).reshape(n, -1),
        actions=np.array(episode.get_actions(), dtype=np.float32).reshape(n, -1),
        logp=np.array(episode.get_extra_model_outputs(Columns.ACTION_LOGP),
                      dtype=np.float32).reshape(n),
        rewards=np.array(episode.get_rewards(), dtype=np.float64).reshape(n),
        costs=np.array([float(info.get("cost", 0.0)) for info in infos], dtype=np.float64),
    )
    task_ids = sorted({int(info["task_id"]) for info in infos if "task_id" in info})
    return data, task_ids


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # no Ray context (a bare local runner)
        return ""


def sample_jobs(runner: Any, jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run sampling jobs in turn on ``runner`` (a SingleAgentEnvRunner).

    Each job is ``{"job": index, "task": Task dict, "weights": RLModule state or None,
    "num_episodes": n}``. Weights are set synchronously and without a sequence number
    (so they are always applied); the task reaches every sub-env of the vector env and
    takes effect at the reset that ``sample(num_episodes=...)`` always performs.
    A job's optional ``"seed"`` seeds that reset (RLlib reseeds the env at every
    ``sample(num_episodes=...)``) and the action noise (torch's global RNG, forked so the
    process's own stream is left as it was).
    Returns ``{"results": [...], "metrics": runner.get_metrics()}``.
    """
    results = []
    for job in jobs:
        if job.get("weights") is not None:
            runner.set_state({COMPONENT_RL_MODULE: job["weights"]})
        runner.env.unwrapped.call("set_task", job["task"])
        episodes = _sample(runner, int(job["num_episodes"]), job.get("seed"))
        converted = [episode_to_data(ep) for ep in episodes]
        results.append({
            "job": job["job"],
            "worker_index": int(runner.worker_index),
            "node_id": _node_id(),
            "task_id": int(job["task"]["task_id"]),
            "episodes": [d for d, _ in converted],
            "episode_task_ids": [ids for _, ids in converted],
            "num_env_steps": int(sum(len(d) for d, _ in converted)),
        })
    return {"results": results, "metrics": runner.get_metrics()}


def _sample(runner: Any, num_episodes: int, seed: Any) -> list:
    """``runner.sample(num_episodes=...)``, seeded when ``seed`` is not None."""
    if seed is None:
        return runner.sample(num_episodes=num_episodes, explore=True)
    runner._seed = int(seed)  # used by the env reset of every sample(num_episodes=...)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return runner.sample(num_episodes=num_episodes, explore=True)
