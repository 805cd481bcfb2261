"""The Batch: one task's sampled episodes as torch tensors, with reward and cost advantages."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from metacpo_rllib.evaluation_stats import t95
from metacpo_rllib.optim.advantages import episode_advantages


class BadBatchError(ValueError):
    """Non-finite environment output (reward, cost or observation) in a task's episodes."""

    def __init__(self, field: str, task_id: int) -> None:
        super().__init__(f"{field}: non-finite values in episodes of task {task_id}")
        self.field = field
        self.task_id = task_id


@dataclasses.dataclass
class EpisodeData:
    """One complete episode as numpy arrays (T steps).

    ``obs[t]`` is the observation at which ``actions[t]`` was taken; ``logp[t]`` its
    log-probability under the sampling policy; ``costs[t]`` is ``info["cost"]`` of step t.
    """

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


@dataclasses.dataclass
class Batch:
    """Steps of one task, flattened over episodes.

    Advantages are fixed data (computed once from the sampled episodes). ``adv_reward`` is
    normalised (only its direction matters); ``adv_cost`` is in episode-cost units, so the
    cost surrogate ``sum(ratio * adv_cost) / num_episodes`` predicts changes of the mean
    episode cost. ``cost_limit`` is the task's h; ``constraint_value`` is
    c = J_C + ``cost_margin`` − h with J_C = ``cost_estimate`` (the mean episode cost, or
    its upper bound, of this batch or of this batch pooled with the task's earlier
    episodes: ``make_batch``) and a margin ≥ 0 in episode-cost units (0: none;
    ``cost_estimate.learned_margin``).
    ``cost_signal_share``: the factor the cost advantages were scaled by (1: unscaled;
    ``cost_estimate.shrink_cost_gradient``).
    """

    obs: Tensor           # [N, obs_dim] float32
    actions: Tensor       # [N, act_dim] float32
    logp: Tensor          # [N] log-prob under the sampling policy
    adv_reward: Tensor    # [N]
    adv_cost: Tensor      # [N]
    ep_returns: Tensor    # [E] undiscounted episode returns
    ep_costs: Tensor      # [E] undiscounted episode costs
    ep_lengths: Optional[Tensor] = None  # [E] steps of each episode (int64)
    task_id: int = 0
    cost_limit: float = 0.0
    cost_estimate: Optional[float] = None  # J_C in c; None: the mean episode cost
    cost_signal_share: float = 1.0
    cost_margin: float = 0.0

    @property
    def num_steps(self) -> int:
        return int(self.obs.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.ep_returns.shape[0])

    @property
    def mean_return(self) -> float:
        return float(self.ep_returns.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.ep_costs.mean())

    @property
    def estimated_cost(self) -> float:
        """J_C: ``cost_estimate``, or the batch's mean episode cost where it is None."""
        return self.mean_cost if self.cost_estimate is None else self.cost_estimate

    @property
    def constraint_value(self) -> float:
        """c = J_C + margin − h in episode-cost units (positive = violating)."""
        return self.estimated_cost + self.cost_margin - self.cost_limit

    @property
    def cost_free(self) -> bool:
        """No episode of the batch had any cost (its cost gradient says nothing)."""
        return self.mean_cost == 0.0

    @property
    def violating(self) -> bool:
        """c > 0: the constraint value says the policy is over its limit."""
        return self.constraint_value > 0.0


def upper_cost_bound(episode_costs: Sequence[float] | np.ndarray) -> float:
    """The one-sided 95% t upper bound of the mean of ``episode_costs`` (at least two
    episodes; episode-cost units)."""
    x = np.asarray(episode_costs, dtype=np.float64)
    return float(x.mean() + t95(len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def make_batch(
    episodes: Sequence[EpisodeData],
    *,
    task_id: int = 0,
    cost_limit: float = 0.0,
    gamma: float = 0.99,
    lam: float = 0.95,
    cost_gamma: float = 1.0,
    cost_lam: float = 0.95,
    cost_upper_bound: bool = False,
    values: Optional[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]] = None,
    cost_history: Sequence[float] = (),
) -> Batch:
    """Build a Batch from complete episodes of one task (GAE for reward and for cost).

    ``cost_upper_bound``: J_C in the constraint value is the one-sided 95% t upper bound of
    the mean episode cost (mean + t₀.₉₅(E−1)·sd/√E; the mean itself with one episode or no
    spread), not the mean: a pessimistic c for small batches.

    ``values``: (reward values, cost values), each per episode an array of the episode's
    length (V of each step, in reward / episode-cost units: e.g. learned critics'); GAE
    then uses them instead of fitting the linear feature baseline.

    ``cost_history``: episode costs of the same task from earlier batches (e.g. its earlier
    adaptation steps); J_C in c is then the mean (or upper bound) of those episodes pooled
    with this batch's, instead of this batch's alone. The gradients stay this batch's."""
    if not episodes:
        raise ValueError(f"episodes: no episodes for task {task_id}")
    for field in ("obs", "rewards", "costs"):
        if not all(np.all(np.isfinite(getattr(ep, field))) for ep in episodes):
            raise BadBatchError(field, task_id)
    obs = [np.asarray(ep.obs, dtype=np.float64) for ep in episodes]
    rewards = [np.asarray(ep.rewards, dtype=np.float64) for ep in episodes]
    costs = [np.asarray(ep.costs, dtype=np.float64) for ep in episodes]
    v_r, v_c = (None, None) if values is None else values
    adv_r = np.concatenate(episode_advantages(obs, rewards, gamma, lam, v_r))
    adv_c = np.concatenate(episode_advantages(obs, costs, cost_gamma, cost_lam, v_c))
    adv_r = (adv_r - adv_r.mean()) / (adv_r.std() + 1e-8)

    def cat(field: str) -> Tensor:
        return torch.as_tensor(np.concatenate([getattr(ep, field) for ep in episodes]),
                               dtype=torch.float32)

    ep_costs = np.array([c.sum() for c in costs])
    pooled = np.concatenate([np.asarray(cost_history, dtype=np.float64), ep_costs])
    estimate = float(pooled.mean()) if len(cost_history) else None
    if cost_upper_bound and len(pooled) > 1:
        estimate = upper_cost_bound(pooled)
    return Batch(
        obs=cat("obs"),
        actions=cat("actions"),
        logp=cat("logp"),
        adv_reward=torch.as_tensor(adv_r, dtype=torch.float32),
        adv_cost=torch.as_tensor(adv_c, dtype=torch.float32),
        ep_returns=torch.tensor([r.sum() for r in rewards], dtype=torch.float32),
        ep_costs=torch.tensor(ep_costs, dtype=torch.float32),
        ep_lengths=torch.tensor([len(r) for r in rewards], dtype=torch.int64),
        task_id=int(task_id),
        cost_estimate=estimate,
        cost_limit=float(cost_limit),
    )
