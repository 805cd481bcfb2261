"""Meta-CPO's outer step keeping θ's own cost beside its adapted policies' (pure torch)."""
import dataclasses

import pytest
import torch

from metacpo_rllib.optim import UpdateConfig, meta_update, params_of
from metacpo_rllib.optim.cpo import CASE_INFEASIBLE
from metacpo_rllib.optim.meta import adapt, own_cost
from metacpo_rllib.optim.policy import detached, flatten

from test_meta_update import random_batch, small_policy


def batches(module, theta, cfg, own_cost_value, query_cost_value, tasks=2, seed=0):
    """Per task θ's batch (episode cost ``own_cost_value``) and the adapted policy's query
    batch (``query_cost_value``), limit 1."""
    gen = torch.Generator().manual_seed(seed)
    support, query = [], []
    for i in range(tasks):
        own = random_batch(module, theta, gen, task_id=i, cost_limit=1.0, cost=own_cost_value)
        phi, _ = adapt(module, theta, [own], cfg)
        support.append([own])
        query.append(random_batch(module, phi, gen, task_id=i, cost_limit=1.0,
                                  cost=query_cost_value))
    return support, query


def config(**kw):
    return UpdateConfig(inner_steps=1, inner_delta=0.005, delta=0.01, cg_iters=30,
                        recover_when_violating=True, **kw).validate()


def test_a_violating_theta_makes_its_own_cost_the_constraint():
    module = small_policy()
    theta = detached(params_of(module))
    cfg = config(theta_cost_constraint=True)
    support, query = batches(module, theta, cfg, own_cost_value=5.0, query_cost_value=1.5)
    new, info = meta_update(module, theta, support, query, cfg)
    assert info["outer_constraint_on_theta"] == 1.0
    assert info["outer_constraint_value"] == 4.0  # θ's c (5 − 1), not the query's (0.5)
    assert info["outer_case"] == CASE_INFEASIBLE and info["line_search_accepted"] == 1.0
    own = [s[0] for s in support]
    change = float((own_cost(module, new, own) - own_cost(module, theta, own)).detach())
    assert change < 0.0  # the step lowers θ's own cost surrogate
    assert info["outer_surrogate_cost_change"] == pytest.approx(change, rel=1e-6, abs=1e-9)
    assert info["outer_theta_cost_change"] == info["outer_surrogate_cost_change"]
    # off, the same data constrains the adapted policies only
    off_new, off = meta_update(module, theta, support, query, dataclasses.replace(
        cfg, theta_cost_constraint=False))
    assert off["outer_constraint_on_theta"] == 0.0 and off["outer_constraint_value"] == 0.5
    # what that step did to θ's own cost is reported all the same
    off_change = float((own_cost(module, off_new, own) - own_cost(module, theta, own)).detach())
    assert off["outer_theta_cost_change"] == pytest.approx(off_change, rel=1e-6, abs=1e-9)


def test_a_theta_within_its_limit_changes_nothing():
    module = small_policy(1)
    theta = detached(params_of(module))
    on = config(theta_cost_constraint=True)
    support, query = batches(module, theta, on, own_cost_value=0.5, query_cost_value=3.0)
    with_own, info = meta_update(module, theta, support, query, on)
    without, _ = meta_update(module, theta, support, query,
                             dataclasses.replace(on, theta_cost_constraint=False))
    assert info["outer_constraint_on_theta"] == 0.0
    torch.testing.assert_close(flatten(with_own), flatten(without), rtol=0, atol=0)
    # the step lowers the adapted policies' cost; what it does to θ's own is reported
    own = [s[0] for s in support]
    change = float((own_cost(module, with_own, own) - own_cost(module, theta, own)).detach())
    assert info["outer_theta_cost_change"] == pytest.approx(change, rel=1e-6, abs=1e-9)
    assert change != 0.0


def test_cpo_has_no_theta_batch_and_ignores_the_switch():
    module = small_policy(2)
    theta = detached(params_of(module))
    gen = torch.Generator().manual_seed(3)
    query = [random_batch(module, theta, gen, task_id=i, cost=4.0) for i in range(2)]
    cfg = UpdateConfig(inner_steps=0, theta_cost_constraint=True, cg_iters=30).validate()
    new, info = meta_update(module, theta, [[], []], query, cfg)
    plain, _ = meta_update(module, theta, [[], []], query,
                           dataclasses.replace(cfg, theta_cost_constraint=False))
    assert info["outer_constraint_on_theta"] == 0.0
    # θ's batches are the query batches: θ's cost change is the outer step's
    assert info["outer_theta_cost_change"] == info["outer_surrogate_cost_change"]
    torch.testing.assert_close(flatten(new), flatten(plain), rtol=0, atol=0)

