"""The cost surrogate is in episode-cost units: bᵀx predicts the realised change of J_C."""
import torch

from metacpo_rllib.envs import Task, make_family
from metacpo_rllib.optim import GaussianMLP, UpdateConfig, make_batch, params_of
from metacpo_rllib.optim.meta import inner_step
from metacpo_rllib.optim.policy import detached, forward
from metacpo_rllib.rollout import sample_episodes, sampling_policy

REWARDS = [0.2, 1.0, 0.6, 0.4]
COSTS = [0.1, 0.9, 0.5, 0.7]
HORIZON = 20


@torch.no_grad()
def expected_episode_cost(module, params, samples=20000):
    """J_C exactly up to Monte Carlo over the policy's logits, with common random numbers:
    the arm probabilities are softmax(logits), one pull per step."""
    gen = torch.Generator().manual_seed(123)
    obs = (torch.arange(HORIZON, dtype=torch.float32) / HORIZON)[:, None]
    mean, log_std = forward(module, params, obs)
    noise = torch.randn((samples, HORIZON, len(COSTS)), generator=gen)
    logits = (mean + log_std.exp() * noise).clamp(-5.0, 5.0)
    return float((torch.softmax(logits, -1) @ torch.tensor(COSTS)).sum(-1).mean())


def test_predicted_cost_change_matches_realised_change():
    torch.manual_seed(0)
    family = make_family("ConstrainedBandit", horizon=HORIZON)
    task = Task("ConstrainedBandit", {"reward_means": REWARDS, "cost_means": COSTS}, 5.0)
    env = family.make_env(task)
    module = GaussianMLP(1, 4, hidden=(8,), init_log_std=0.0)
    theta = detached(params_of(module))
    episodes = sample_episodes(env, sampling_policy(module, theta), 600, seed=0)
    batch = make_batch(episodes, cost_limit=task.cost_limit, cost_gamma=1.0, cost_lam=1.0)
    assert batch.constraint_value > 0  # the uniform policy violates h = 5 (J_C ≈ 11)
    cfg = UpdateConfig(inner_steps=1, metric="euclidean", inner_delta=0.02)
    new, step = inner_step(module, theta, batch, cfg, create_graph=False)
    realised = expected_episode_cost(module, new) - expected_episode_cost(module, theta)
    predicted = float(step.predicted_cost_change)
    assert realised < -0.3  # the step is a real cost decrease
    assert abs(predicted - realised) <= 0.3 * abs(realised)
