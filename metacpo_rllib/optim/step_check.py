"""Checking a test-time adaptation step on the cost its policy then realised, and backtracking.

Every CPO step trusts the cost model of the batch it learned from. Where the stepped
policy's own fresh episodes cost more than both the limit and that batch, the model was
wrong about this step: it is halved (the parameters move half as far from where the step
started) and tried again on fresh episodes, and after ``backtracks`` halvings the task keeps
the parameters it had before the step. Costs are mean episode costs (episode-cost units);
the fresh episodes' mean or, pessimistically, its upper confidence bound is what is held to
the limit.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import torch

from metacpo_rllib.optim.batch import Batch
from metacpo_rllib.optim.policy import Params


def step_rejected(realised_cost: float, learned_cost: float, limit: float,
                  realised_bound: Optional[float] = None) -> bool:
    """True if the stepped policy's fresh episodes cost (mean ``realised_cost``; with
    ``realised_bound``, that upper bound of it) more than the limit, and (their mean) more
    than the batch the step learned from (mean ``learned_cost``): a step that carried a
    policy within its limit over it, or made a violating one worse."""
    held = realised_cost if realised_bound is None else realised_bound
    return held > limit and realised_cost > learned_cost


def between(before: Params, after: Params, fraction: float) -> Params:
    """before + fraction · (after − before), as new leaves (fraction 0: ``before``)."""
    with torch.no_grad():
        return {k: (before[k] + fraction * (after[k] - before[k])).detach().clone()
                .requires_grad_(True) for k in before}


@dataclasses.dataclass(frozen=True)
class PendingStep:
    """An adaptation step waiting for its check: the parameters before it (``before``) and
    after it in full (``after``), the batch it learned from and the step's info; the
    fraction of it the task holds now and the halvings left."""

    before: Params
    after: Params
    batch: Batch
    info: Mapping[str, Any]
    fraction: float
    backtracks_left: int

    def checked(self, realised_cost: float, realised_bound: Optional[float] = None
                ) -> "PendingStep | None":
        """None if the step (at its current fraction) stands, given the mean episode cost
        of its policy's fresh episodes (and its upper bound, :func:`step_rejected`); else
        the step to try next: half the fraction, or fraction 0 (the parameters before the
        step, not checked again) once no halving is left."""
        if not step_rejected(realised_cost, self.batch.mean_cost, self.batch.cost_limit,
                             realised_bound):
            return None
        if self.backtracks_left == 0:
            return dataclasses.replace(self, fraction=0.0)
        return dataclasses.replace(self, fraction=self.fraction / 2,
                                   backtracks_left=self.backtracks_left - 1)

    @property
    def params(self) -> Params:
        """The parameters at the current fraction of the step."""
        return between(self.before, self.after, self.fraction)
