"""The held-out ``test_tight`` split: listed in ``family.splits``, tighter than training, and
an untrained policy violates its limit there (PointNav, PointCircle)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metacpo_rllib.envs import make_family
from metacpo_rllib.envs.base import TIGHT_SPLIT
from metacpo_rllib.optim import GaussianMLP
from metacpo_rllib.rllib.episodes import evaluation_seed, numpy_policy, rollout


def _untrained_costs(family, split: str, num_tasks: int, episodes: int) -> tuple[list, float]:
    """Mean episode cost per task of a freshly initialised policy (fixed torch seed) on
    ``num_tasks`` tasks of ``split``, on evaluation seeds; and the split's cost limit."""
    tasks = family.sample_tasks(num_tasks, split, seed=7)
    env = family.make_env(tasks[0])
    torch.manual_seed(0)
    policy = numpy_policy(GaussianMLP(env.observation_space.shape[0],
                                      env.action_space.shape[0]))
    costs = []
    for task in tasks:
        env.set_task(task)
        data, _, _ = rollout([env], policy, episodes, evaluation_seed(0, task.to_dict()),
                             env.action_space.low, env.action_space.high)
        costs.append(float(np.mean([d.costs.sum() for d in data])))
    env.close()
    return costs, tasks[0].cost_limit


def test_splits_are_listed_and_kept_apart():
    nav, bandit = make_family("PointNav"), make_family("ConstrainedBandit")
    assert nav.splits == ("train", "test", TIGHT_SPLIT)
    assert bandit.splits == ("train", "test")
    with pytest.raises(ValueError, match="split"):
        bandit.sample_tasks(1, TIGHT_SPLIT)
    tight = nav.sample_tasks(50, TIGHT_SPLIT, seed=0)
    assert {t.split for t in tight} == {TIGHT_SPLIT}
    assert min(t.task_id for t in tight) == 2_000_000       # ids apart from train / test
    assert all(t.cost_limit == nav.cost_limits["test"] for t in tight)
    train_radius = max(t.params["hazard_radius"] for t in nav.sample_tasks(200, "train", seed=0))
    assert min(t.params["hazard_radius"] for t in tight) > train_radius
    for t in tight:  # the start is outside the hazard, the goal beyond it
        p = t.params
        centre = np.hypot(p["hazard_x"], p["hazard_y"])
        assert centre - p["hazard_radius"] >= 0.05 - 1e-4
        assert np.hypot(p["goal_x"], p["goal_y"]) >= centre + p["hazard_radius"] + 0.1 - 1e-3
        assert nav.validate_task(t) is t
    # the train and test splits draw the same tasks as before the new split existed
    first = nav.sample_tasks(1, "train", seed=0)[0].params
    assert first == nav.sample_tasks(1, "train", seed=0)[0].params


def test_untrained_policy_violates_tight_pointnav():
    family = make_family("PointNav")
    tight, limit = _untrained_costs(family, TIGHT_SPLIT, 8, 10)
    test, _ = _untrained_costs(family, "test", 8, 10)
    assert limit == 5.0
    assert sum(c > limit for c in tight) >= 7, tight
    assert np.mean(tight) > 2 * limit and np.mean(tight) > np.mean(test)


def test_pointcircle_tight_walls_and_violation():
    family = make_family("PointCircle")
    assert TIGHT_SPLIT in family.splits and family.splits[:2] == ("train", "test")
    walls = [t.params["radius"] * t.params["factor"]
             for t in family.sample_tasks(100, TIGHT_SPLIT, seed=0)]
    train = [t.params["radius"] * t.params["factor"]
             for t in family.sample_tasks(100, "train", seed=0)]
    assert 0.25 < min(walls) and max(walls) < min(train)     # inside every training wall
    costs, limit = _untrained_costs(family, TIGHT_SPLIT, 3, 4)
    assert all(c > limit for c in costs), costs
