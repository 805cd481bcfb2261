"""Training's outer constraint: J_C over a window of earlier query episodes
(train_cost_window) and a setpoint below the limit (train_limit_margin)."""
from __future__ import annotations

import numpy as np
import pytest

from metacpo_rllib.rllib import CPOConfig, MetaCPOConfig

pytestmark = pytest.mark.ray


def _config(cls=CPOConfig, **training):
    # theta_cost_constraint off: the outer c is the query batches' alone (Meta-CPO)
    settings = {"tasks_per_iteration": 2, "episodes_per_task": 2, "seed": 3,
                "cost_upper_bound": False, "theta_cost_constraint": False, **training}
    return (cls().environment("PointNav", env_config={"horizon": 30})
            .training(**settings))


def _window(algo) -> list[float]:
    return algo._on_learner(lambda learner: list(learner._recent_excess))


def test_outer_constraint_pools_the_earlier_query_episodes(ray_local):
    """With a window longer than the run (and the mean as J_C), iteration t's outer c is
    the mean over its tasks of (earlier iterations' query episodes pooled with the task's
    own) − h: computed here from the reported per-task batch costs. Without a window it is
    the tasks' own batch means."""
    for window in (0, 1000):
        algo = _config(train_cost_window=window).build_algo()
        try:
            excess_sum, count, seen = 0.0, 0, []
            for _ in range(4):
                result = algo.train()["metacpo"]
                per_task = result["per_task"]
                costs = np.array(per_task["post_cost"])
                limits = np.array(per_task["cost_limit"])
                own = costs * 2  # 2 episodes per task
                if window:
                    pooled = (excess_sum + count * limits + own) / (count + 2)
                else:
                    pooled = costs
                expected = float(np.mean(pooled - limits))
                assert result["update"]["outer_constraint_value"] == pytest.approx(
                    expected, rel=1e-5, abs=1e-5)
                excess_sum += float(np.sum(own - 2 * limits))
                count += 2 * len(costs)
                seen.extend(costs)
            assert max(seen) > 0  # the check saw cost
            assert len(_window(algo)) == (count if window else 0)
            assert sum(_window(algo)) == pytest.approx(excess_sum if window else 0.0, abs=1e-4)
        finally:
            algo.stop()


def test_window_keeps_the_latest_episodes_and_survives_a_checkpoint(ray_local, tmp_path):
    """Meta-CPO: after one iteration (the same for every window: nothing is pooled yet) a
    window of 3 holds the last 3 of the 4 query episodes a longer window holds; the window
    is part of the checkpoint, and a restored run continues from it."""
    from ray.rllib.algorithms.algorithm import Algorithm

    long = _config(MetaCPOConfig, train_cost_window=1000).build_algo()
    try:
        long.train()
        full = _window(long)
    finally:
        long.stop()
    assert len(full) == 4 and any(e != full[0] for e in full)
    algo = _config(MetaCPOConfig, train_cost_window=3).build_algo()
    try:
        algo.train()
        assert _window(algo) == pytest.approx(full[-3:])
        algo.train()
        window = _window(algo)
        assert len(window) == 3
        path = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        assert _window(restored) == pytest.approx(window)
        restored.train()
        assert len(_window(restored)) == 3
    finally:
        restored.stop()


@pytest.mark.parametrize("cls", [CPOConfig, MetaCPOConfig])
def test_limit_margin_moves_the_outer_setpoint(ray_local, cls):
    """With train_limit_margin f the outer c is the query batches' mean of J_C + f·h − h:
    the constraint aims at (1 − f)·h; the reported limits stay h."""
    algo = _config(cls, train_limit_margin=0.4).build_algo()
    try:
        for _ in range(2):
            result = algo.train()["metacpo"]
            costs = np.array(result["per_task"]["post_cost"])
            limits = np.array(result["per_task"]["cost_limit"])
            assert result["update"]["outer_constraint_value"] == pytest.approx(
                float(np.mean(costs - 0.6 * limits)), rel=1e-5, abs=1e-5)
            assert result["cost_limit_mean"] == pytest.approx(float(np.mean(limits)))
            assert min(limits) > 0
    finally:
        algo.stop()
