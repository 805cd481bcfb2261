"""Meta-CPO on the constrained bandit: after meta-training, ≤ 3 inner steps make new tasks safe."""
import itertools

import numpy as np
import pytest
import torch

from metacpo_rllib.envs import make_family
from metacpo_rllib.optim import GaussianMLP, UpdateConfig, make_batch, meta_update, params_of
from metacpo_rllib.optim.meta import adaptation_step
from metacpo_rllib.optim.policy import detached, forward
from metacpo_rllib.rollout import sample_episodes, sampling_policy

LIMIT = 5.0   # episode-cost limit of every task here (20 pulls, cost 0/1 per pull)
EPISODES = 30
CFG = UpdateConfig(inner_steps=1, metric="fisher", delta=0.05, inner_delta=0.3)


@torch.no_grad()
def exact_episode_cost(module, params, task, horizon=20, samples=4000):
    """J_C of the policy on ``task`` (Monte Carlo over the logits only, no env noise)."""
    gen = torch.Generator().manual_seed(1)
    obs = (torch.arange(horizon, dtype=torch.float32) / horizon)[:, None]
    mean, log_std = forward(module, params, obs)
    logits = (mean + log_std.exp() * torch.randn((samples, horizon, mean.shape[-1]),
                                                 generator=gen)).clamp(-5.0, 5.0)
    costs = torch.tensor(task.params["cost_means"])
    return float((torch.softmax(logits, -1) @ costs).sum(-1).mean())


@pytest.mark.slow
def test_meta_cpo_makes_new_bandit_tasks_safe_within_three_steps():
    torch.manual_seed(0)
    family = make_family("ConstrainedBandit")
    env = family.make_env()
    module = GaussianMLP(1, 4, hidden=(16,), init_log_std=0.0)
    seeds = itertools.count()  # every batch its own seed: reproducible, never repeated

    def batch(task, params):
        env.set_task(task)
        episodes = sample_episodes(env, sampling_policy(module, params), EPISODES,
                                   seed=next(seeds))
        return make_batch(episodes, task_id=task.task_id, cost_limit=task.cost_limit)

    def safe_within_three_steps(params):
        """Fraction of held-out tasks whose exact J_C ≤ h after at most 3 adaptation steps."""
        safe = []
        for task in family.sample_tasks(10, "train", seed=999, cost_limit=LIMIT):
            phi, costs = params, []
            for _ in range(3):
                phi, _ = adaptation_step(module, phi, batch(task, phi), CFG)
                costs.append(exact_episode_cost(module, phi, task))
            safe.append(min(costs) <= LIMIT)
        return float(np.mean(safe))

    theta = detached(params_of(module))
    before = safe_within_three_steps(theta)
    for iteration in range(16):
        tasks = family.sample_tasks(4, "train", seed=iteration, cost_limit=LIMIT)
        support, query = [], []
        for task in tasks:
            first = batch(task, theta)
            phi, _ = adaptation_step(module, theta, first, CFG)
            support.append([first])
            query.append(batch(task, phi))
        theta, info = meta_update(module, theta, support, query, CFG)
    after = safe_within_three_steps(theta)
    assert after >= 0.7, (before, after)
    assert after > before, (before, after)
