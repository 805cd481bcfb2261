"""How a batch's episode costs enter the CPO step: a shrunk cost gradient, a pessimistic c
and a margin learned from the cost changes the steps predicted and realised.

Corrections for small, bursty batches (a few episodes per task, costs in rare large
excursions), each applied to the Batch as data before any step is taken, so every step
and the meta-gradient through it stay exact functions of that data:

* **Signal share.** A noisy cost gradient b̂ = s + n inflates bᵀH⁻¹b, so the predicted cost
  change bᵀx overstates the realised one. With the gradients b₁, b₂ of two disjoint halves
  of the episodes, ρ̂ = b₁ᵀb₂ / ‖(b₁ + b₂)/2‖² estimates the share of ‖b̂‖² that is signal
  (E[b₁ᵀb₂] = ‖s‖²), and ρ̂ b̂ is the shrunk estimate of s. The cost advantages are scaled by
  ρ̂ (clipped to [``MIN_SIGNAL_SHARE``, 1]), which scales b and every predicted cost change.
* **Upper bound of J_C.** c = J_C − h with J_C the one-sided 95% t upper bound of the
  batch's mean episode cost instead of its mean (``make_batch(cost_upper_bound=True)``).
* **Learned margin** (test-time adaptation). c = J_C + m − h, where a task's margin m grows
  by how much its last step's realised cost change exceeded the predicted one
  (:func:`learned_margin`): a task whose steps overpromise is held further below h.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from metacpo_rllib.optim.batch import Batch
from metacpo_rllib.optim.policy import Params, flatten, forward, log_prob

#: The smallest signal share applied: a gradient that looks like pure noise still keeps its
#: direction (a violating task still has a recovery direction).
MIN_SIGNAL_SHARE = 0.05


def cost_signal_share(module: nn.Module, params: Params, batch: Batch) -> float:
    """ρ̂ ∈ [MIN_SIGNAL_SHARE, 1]: the cross-fitted signal share of the batch's cost gradient
    at ``params`` (the sampling policy), from episodes split alternately into two halves.
    1.0 with fewer than two episodes or a zero gradient (nothing to shrink)."""
    episodes = batch.num_episodes
    if batch.ep_lengths is None:
        raise ValueError("ep_lengths: the batch does not say where its episodes end")
    if episodes < 2:
        return 1.0
    tensors = list(params.values())
    index = torch.repeat_interleave(torch.arange(episodes), batch.ep_lengths)
    mean, log_std = forward(module, params, batch.obs)
    logp = log_prob(mean, log_std, batch.actions)
    halves = []
    for parity in (0, 1):
        mask = index % 2 == parity
        objective = (logp[mask] * batch.adv_cost[mask]).sum() / int((episodes + 1 - parity) // 2)
        halves.append(flatten(torch.autograd.grad(objective, tensors, retain_graph=True)))
    b1, b2 = (h.double() for h in halves)
    average = (b1 + b2) / 2
    norm2 = float(average @ average)
    if norm2 <= 1e-30:
        return 1.0
    return min(1.0, max(MIN_SIGNAL_SHARE, float(b1 @ b2) / norm2))


def learned_margin(margin: float, realised: float, predicted: float, rate: float) -> float:
    """The margin after one step: max(0, ``margin`` + ``rate`` · (``realised`` −
    ``predicted``)), all in episode-cost units.

    ``predicted`` is the step's predicted change of the mean episode cost (bᵀx times the
    accepted line-search fraction); ``realised`` the change of the mean episode cost from the
    batch the step learned from to the next one (sampled after the step). A step that raised
    the cost more (or lowered it less) than predicted raises the margin; one that did better
    lowers it, never below 0. A NaN prediction (no cost model) leaves the margin as it is."""
    if rate < 0:
        raise ValueError(f"rate: expected a number >= 0, got {rate!r}")
    error = realised - predicted
    if error != error:  # NaN
        return margin
    return max(0.0, margin + rate * error)


def shrink_cost_gradient(module: nn.Module, params: Params, batch: Batch) -> Batch:
    """``batch`` with its cost advantages scaled by :func:`cost_signal_share` (recorded as
    ``batch.cost_signal_share``); ``params`` are the policy the batch was sampled with."""
    with torch.enable_grad():
        share = cost_signal_share(module, {k: v.detach().requires_grad_(True)
                                           for k, v in params.items()}, batch)
    return dataclasses.replace(batch, adv_cost=batch.adv_cost * share,
                               cost_signal_share=share)
