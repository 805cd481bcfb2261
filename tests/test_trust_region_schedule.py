"""trust_region_schedule: the outer trust-region radius by meta-iteration."""
from __future__ import annotations

import pytest

from metacpo_rllib.rllib import CPOConfig

SCHEDULE = [[0, 0.01], [10, 0.01], [20, 0.002]]


def test_radius_is_interpolated_and_constant_beyond_the_ends():
    config = CPOConfig().training(trust_region_schedule=SCHEDULE, trust_region_delta=0.5)
    assert [config.outer_delta(i) for i in (0, 5, 10, 15, 20, 40)] == pytest.approx(
        [0.01, 0.01, 0.01, 0.006, 0.002, 0.002])
    assert config.update_config(15).delta == pytest.approx(0.006)
    # test-time CPO steps without adaptation_delta: the radius the schedule has reached
    assert config.adaptation_update_config(iteration=30).delta == pytest.approx(0.002)
    config.training(adaptation_delta=0.003)
    assert config.adaptation_update_config(iteration=30).delta == pytest.approx(0.003)
    assert CPOConfig().training(trust_region_delta=0.02).update_config(7).delta == 0.02


@pytest.mark.ray
def test_training_steps_at_the_scheduled_radius(ray_local):
    """On a real algorithm the update of iteration t reports the scheduled radius and its
    accepted step stays inside it (no longer recovery: the radius is the schedule's)."""
    algo = (CPOConfig().environment("PointNav", env_config={"horizon": 30})
            .training(tasks_per_iteration=2, episodes_per_task=2, seed=0,
                      trust_region_schedule=[[0, 0.02], [2, 0.001]],
                      outer_recovery_scale=1.0).build_algo())
    try:
        for expected in (0.02, 0.0105, 0.001, 0.001):
            update = algo.train()["metacpo"]["update"]
            assert update["outer_delta"] == pytest.approx(expected)
            assert update["outer_kl"] <= expected * (1 + 1e-6)
    finally:
        algo.stop()


@pytest.mark.ray
def test_outer_recovery_scale_widens_only_violating_steps(ray_local):
    """With outer_recovery_scale k the outer step's radius is k·δ exactly in the
    iterations whose constraint value c > 0 (the scheduled δ otherwise), and the accepted
    step stays inside it; test-time steps keep the factor 1."""
    config = (CPOConfig().environment("PointNav", env_config={"horizon": 30})
              .training(tasks_per_iteration=2, episodes_per_task=2, seed=1,
                        train_cost_limit=1.0, outer_recovery_scale=4.0,
                        trust_region_schedule=[[0, 0.004], [3, 0.002]]))
    assert config.adaptation_update_config(violating=True).outer_recovery_scale == 1.0
    algo = config.build_algo()
    seen = set()
    try:
        for iteration in range(5):
            update = algo.train()["metacpo"]["update"]
            violating = update["outer_constraint_value"] > 0
            seen.add(violating)
            expected = config.outer_delta(iteration) * (4.0 if violating else 1.0)
            assert update["outer_delta"] == pytest.approx(expected)
            assert update["outer_kl"] <= expected * (1 + 1e-6)
    finally:
        algo.stop()
    assert True in seen
