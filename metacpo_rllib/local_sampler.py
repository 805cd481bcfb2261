"""Ray-free episode sampling with a torch Gaussian policy (for tests, examples and benchmarks)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metacpo_rllib.envs import TaskEnv
from metacpo_rllib.optim.batch import EpisodeData
from metacpo_rllib.optim.policy import Params, forward, log_prob


@torch.no_grad()
def sample_episodes(
    env: TaskEnv,
    module: nn.Module,
    params: Params,
    num_episodes: int,
    rng: torch.Generator | None = None,
    seed: int | None = None,
) -> list[EpisodeData]:
    """Roll out ``num_episodes`` complete episodes of ``env``'s current task.

    Actions are drawn from the Gaussian policy at ``params``; ``logp`` records their
    log-probability; ``costs`` are the steps' ``info["cost"]``.
    """
    episodes = []
    for i in range(num_episodes):
        obs, _ = env.reset(seed=None if seed is None else seed + i)
        cols: dict[str, list] = {"obs": [], "actions": [], "logp": [], "rewards": [], "costs": []}
        done = False
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32)[None]
            mean, log_std = forward(module, params, obs_t)
            noise = torch.randn(mean.shape, generator=rng)
            action = mean + torch.exp(log_std) * noise
            cols["obs"].append(obs)
            cols["actions"].append(action[0].numpy())
            cols["logp"].append(float(log_prob(mean, log_std, action)[0]))
            obs, reward, terminated, truncated, info = env.step(action[0].numpy())
            cols["rewards"].append(reward)
            cols["costs"].append(info["cost"])
            done = terminated or truncated
        episodes.append(EpisodeData(**{k: np.asarray(v, dtype=np.float32)
                                       for k, v in cols.items()}))
    return episodes
