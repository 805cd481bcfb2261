"""Adaptation steps below their limit whose radius is capped by the room h − J_C
(``optim.meta.room_capped``, ``UpdateConfig.cost_room``, ``adaptation_cost_room``)."""
import math

import pytest
import torch

from metacpo_rllib.optim import UpdateConfig, params_of
from metacpo_rllib.optim.meta import inner_steps, room_capped
from metacpo_rllib.optim.policy import detached

from test_meta_update import random_batch, small_policy


def _instance(c: float, delta: float = 1.0, with_b: bool = True, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(6, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64) if with_b else None
    return (g, b, torch.tensor(c, dtype=torch.float64), torch.tensor(delta, dtype=torch.float64))


@pytest.mark.parametrize("k", [0.5, 1.0])
def test_the_cap_bounds_the_first_order_cost_rise_in_every_direction(k):
    """Identity metric (w = b): the capped radius is (k·c)² / (2‖b‖²), and the largest
    first-order cost rise inside it, √(2δ')‖b‖, is k times the room −c."""
    g, b, c, delta = _instance(-0.3)
    [(_, _, _, capped)] = room_capped([(g, b, c, delta)], [(g, b)], k)
    s = float(b @ b)
    assert float(capped) == pytest.approx((k * 0.3) ** 2 / (2 * s))
    assert math.sqrt(2 * float(capped) * s) == pytest.approx(k * 0.3)
    assert float(capped) < float(delta)  # the cap was in play


def test_the_cap_leaves_violating_cost_free_and_roomy_steps_alone():
    """c > 0 (recovery), no cost gradient (TRPO) and a room so large that the cap exceeds δ
    keep their radius."""
    for instance in (_instance(0.3), _instance(-0.3, with_b=False), _instance(-1e3)):
        g, b, c, delta = instance
        w = torch.zeros_like(g) if b is None else b
        [(_, _, _, radius)] = room_capped([instance], [(g, w)], 1.0)
        assert float(radius) == float(delta)
    # k = 0 is "off": every radius as it was
    instance = _instance(-0.3)
    [(_, _, _, radius)] = room_capped([instance], [(instance[0], instance[1])], 0.0)
    assert float(radius) == float(instance[3])


def test_an_adaptation_step_below_its_limit_stays_inside_the_capped_radius():
    """Euclidean metric: a task below its limit takes a step of ½‖x‖² ≤ (k·c)²/(2‖b‖²)
    with cost_room = k, one above its limit the same step as without it."""
    module = small_policy(1)
    theta = detached(params_of(module))
    gen = torch.Generator().manual_seed(3)
    batches = [random_batch(module, theta, gen, task_id=i, cost_limit=1.0, cost=cost)
               for i, cost in enumerate((0.8, 2.0))]
    plain = UpdateConfig(inner_delta=0.05, metric="euclidean").validate()
    roomy = UpdateConfig(inner_delta=0.05, metric="euclidean", cost_room=1.0).validate()
    _, free_steps = inner_steps(module, [theta] * 2, batches, plain, create_graph=False)
    _, room_steps = inner_steps(module, [theta] * 2, batches, roomy, create_graph=False)
    below, above = room_steps
    c = float(batches[0].constraint_value)
    assert c < 0 < float(batches[1].constraint_value)
    half_sq = 0.5 * float(below.x.pow(2).sum())
    assert half_sq < 0.5 * float(free_steps[0].x.pow(2).sum())  # shorter than without
    b_norm_sq = float(below.metric_solution[:, 1] @ below.metric_solution[:, 1])
    assert half_sq <= c * c / (2 * b_norm_sq) * (1 + 1e-6)
    torch.testing.assert_close(above.x, free_steps[1].x)


def test_cost_room_is_for_test_time_steps_and_validated():
    module = small_policy()
    theta = detached(params_of(module))
    batch = random_batch(module, theta, torch.Generator().manual_seed(0), cost=0.5)
    cfg = UpdateConfig(metric="euclidean", cost_room=1.0).validate()
    with pytest.raises(ValueError, match="cost_room"):
        inner_steps(module, [params_of(module)], [batch], cfg, create_graph=True)
    for value in (-0.1, math.inf, math.nan, True, "1"):
        with pytest.raises(ValueError, match="cost_room"):
            UpdateConfig(cost_room=value).validate()
