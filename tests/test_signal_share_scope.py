"""Which batches the cross-fitted signal share shrinks (``cost_signal_share_scope``): by
default only those over their limit (c > 0), whose step is built from the cost gradient
itself; a satisfied batch keeps its gradient, since shrinking it would only loosen its
constraint (bᵀx ≤ −c/ρ̂)."""
from __future__ import annotations

import numpy as np
import pytest

from metacpo_rllib.rllib import CPOConfig

pytestmark = pytest.mark.ray


def _shares(scope: str | None, iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(c per task and iteration, the share its outer batch was shrunk by)."""
    training = {"tasks_per_iteration": 3, "episodes_per_task": 4, "seed": 3,
                "cost_upper_bound": False, "train_cost_limit": 2.0}
    if scope is not None:
        training["cost_signal_share_scope"] = scope
    algo = (CPOConfig().environment("PointNav", env_config={"horizon": 30})
            .training(**training).build_algo())
    try:
        c, share = [], []
        for _ in range(iterations):
            per_task = algo.train()["metacpo"]["per_task"]
            c += list(np.array(per_task["constraint_cost"]) - np.array(per_task["cost_limit"]))
            share += per_task["cost_signal_share"]
    finally:
        algo.stop()
    return np.array(c), np.array(share)


def test_default_shrinks_only_violating_batches(ray_local):
    c, share = _shares(None)
    # the run saw both kinds, and satisfied batches with some cost (a cost-free batch has no
    # cost gradient to shrink: its share is 1 whatever the scope)
    assert (c > 0).any() and ((c <= 0) & (c > -2.0)).any()
    assert np.all(share[c <= 0] == 1.0)
    assert np.all((share[c > 0] > 0) & (share[c > 0] <= 1.0))
    assert (share[c > 0] < 1.0).any()


def test_scope_all_shrinks_satisfied_batches_too(ray_local):
    c, share = _shares("all")
    satisfied = (c <= 0) & (c > -2.0)  # saw some cost
    assert satisfied.any()
    assert (share[satisfied] < 1.0).any()
