"""Training's inner steps at the adaptation steps' radius rule (``optim.meta.inner_radius``)."""
import pytest
import torch

from metacpo_rllib.optim import UpdateConfig, params_of
from metacpo_rllib.optim.meta import adapt, inner_radius, inner_steps
from metacpo_rllib.optim.policy import detached

from test_meta_update import (assert_meta_gradient_matches_finite_differences, random_batch,
                              small_policy)

SCALED = dict(inner_cost_free_scale=0.25, inner_recovery_scale=6.0)


def test_the_radius_scales_on_cost_free_and_on_violating_batches_only():
    module = small_policy()
    theta = detached(params_of(module))
    gen = torch.Generator().manual_seed(0)
    free, over, under = (random_batch(module, theta, gen, cost_limit=1.0, cost=cost)
                         for cost in (0.0, 2.0, 0.5))
    plain = UpdateConfig(inner_delta=0.01)
    scaled = UpdateConfig(inner_delta=0.01, **SCALED)
    assert [inner_radius(b, plain) for b in (free, over, under)] == [0.01] * 3
    assert [inner_radius(b, scaled) for b in (free, over, under)] == \
        pytest.approx([0.0025, 0.06, 0.01])
    # unconstrained steps (Meta-TRPO) have no recovery
    assert inner_radius(over, UpdateConfig(inner_delta=0.01, constrained=False, **SCALED)) \
        == pytest.approx(0.01)
    # a cost-free batch whose limit is 0 (c = 0, not > 0) takes the cost-free radius only
    zero = random_batch(module, theta, gen, cost_limit=0.0, cost=0.0)
    assert inner_radius(zero, scaled) == pytest.approx(0.0025)


def test_each_tasks_inner_step_reaches_its_own_radius():
    """Euclidean metric: every CPO step ends on its trust region, ½‖x‖² = radius; the
    batched steps give each task its own scaled radius."""
    module = small_policy(1)
    theta = detached(params_of(module))
    gen = torch.Generator().manual_seed(2)
    batches = [random_batch(module, theta, gen, task_id=i, cost_limit=1.0, cost=cost)
               for i, cost in enumerate((0.0, 2.0, 0.5))]
    cfg = UpdateConfig(inner_delta=0.004, metric="euclidean", **SCALED).validate()
    _, steps = inner_steps(module, [theta] * 3, batches, cfg, create_graph=False)
    half_sq = [0.5 * float(step.x.pow(2).sum()) for step in steps]
    assert half_sq == pytest.approx([0.001, 0.024, 0.004], rel=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "fisher"])
def test_meta_gradient_stays_exact_with_scaled_inner_radii(metric):
    """Central finite differences with a cost-free, a violating and a feasible task."""
    module = small_policy()
    cfg = UpdateConfig(inner_steps=1, metric=metric, recover_when_violating=True,
                       inner_delta=0.004 if metric == "fisher" else 0.002, cg_iters=80,
                       cg_damping=0.01, cg_tol=1e-26, **SCALED).validate()
    theta = detached(params_of(module))
    gen = torch.Generator().manual_seed(5)
    support, query = [], []
    for i, cost in enumerate((0.0, 2.0, 0.5)):
        batch = random_batch(module, theta, gen, task_id=i, cost_limit=1.0, cost=cost)
        phi, _ = adapt(module, theta, [batch], cfg)
        support.append([batch])
        query.append(random_batch(module, phi, gen, task_id=i, cost_limit=1.0, cost=cost))
    steps = assert_meta_gradient_matches_finite_differences(module, theta, support, query, cfg)
    radii = [inner_radius(s[0], cfg) for s in support]
    assert len(set(radii)) == 3  # the three radii differ: the scales were in play
    assert len(steps) == 3


def test_update_config_validates_the_scales():
    for field, value in [("inner_cost_free_scale", 0.0), ("inner_cost_free_scale", 1.5),
                         ("inner_recovery_scale", 0.5), ("inner_recovery_scale", float("inf"))]:
        with pytest.raises(ValueError, match=field):
            UpdateConfig(**{field: value}).validate()


def test_the_config_sets_the_training_scales_and_adaptation_scales_its_own_radius():
    import metacpo_rllib.rllib as rl

    config = rl.MetaCPOConfig().training(adaptation_cost_free_scale=0.25,
                                         adaptation_recovery_scale=6.0)
    default = config.update_config()  # cost-free inner steps at a quarter of the radius
    assert (default.inner_cost_free_scale, default.inner_recovery_scale) == (0.25, 1.0)
    config.training(inner_cost_free_scale=0.5, inner_recovery_scale=2.0)
    on = config.update_config()
    assert (on.inner_cost_free_scale, on.inner_recovery_scale) == (0.5, 2.0)
    # an adaptation step's radius is scaled once, by the adaptation factors
    step = config.adaptation_update_config(cost_free=True)
    assert (step.inner_cost_free_scale, step.inner_recovery_scale) == (1.0, 1.0)
    assert step.inner_delta == pytest.approx(0.25 * config.inner_delta)
