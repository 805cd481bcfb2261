"""How batch costs enter the step: signal-share shrinkage, the upper bound of J_C, recovery
when violating; the meta-gradient stays exact through all three (pure torch)."""
import dataclasses

import numpy as np
import pytest
import torch

from metacpo_rllib.evaluation_stats import cost_stats
from metacpo_rllib.optim import EpisodeData, UpdateConfig, make_batch
from metacpo_rllib.optim.cost_estimate import (MIN_SIGNAL_SHARE, cost_signal_share,
                                               shrink_cost_gradient)
from metacpo_rllib.optim.cpo import CASE_INFEASIBLE, CASE_RECOVERY, classify
from metacpo_rllib.optim.policy import detached, flatten, params_of
from metacpo_rllib.optim.surrogate import surrogates
from test_meta_update import (OBS, assert_meta_gradient_matches_finite_differences,
                              meta_batches, random_batch, small_policy)


def _with_episodes(batch, lengths):
    return dataclasses.replace(batch, ep_lengths=torch.tensor(lengths),
                               ep_returns=torch.zeros(len(lengths), dtype=torch.float64),
                               ep_costs=torch.ones(len(lengths), dtype=torch.float64))


def _two_halves(module, params, second_half_sign):
    """Four episodes of 16 steps: episodes 1 and 3 repeat 0 and 2 with their cost
    advantages times ``second_half_sign`` (the alternate halves' gradients are then
    b₂ = sign · b₁)."""
    gen = torch.Generator().manual_seed(3)
    base = random_batch(module, params, gen, n=32, episodes=2)
    order = [slice(0, 16), slice(0, 16), slice(16, 32), slice(16, 32)]
    signs = [1.0, second_half_sign, 1.0, second_half_sign]

    def tile(t):
        return torch.cat([t[s] for s in order])

    return _with_episodes(dataclasses.replace(
        base, obs=tile(base.obs), actions=tile(base.actions), logp=tile(base.logp),
        adv_reward=tile(base.adv_reward),
        adv_cost=torch.cat([sign * base.adv_cost[s] for s, sign in zip(order, signs)])),
        [16, 16, 16, 16])


def test_signal_share_is_one_when_the_halves_agree_and_minimal_when_they_disagree():
    module = small_policy()
    params = detached(params_of(module))
    assert cost_signal_share(module, params, _two_halves(module, params, 1.0)) == \
        pytest.approx(1.0)
    assert cost_signal_share(module, params, _two_halves(module, params, -0.5)) == \
        MIN_SIGNAL_SHARE


def test_signal_share_of_pure_noise_is_small_and_of_a_strong_signal_is_large():
    """Cost advantages that are pure noise vs a shared signal plus a little noise."""
    module = small_policy()
    params = detached(params_of(module))
    gen = torch.Generator().manual_seed(0)
    noise = _with_episodes(random_batch(module, params, gen, n=400, episodes=8), [50] * 8)
    shares = []
    for weight in (0.0, 3.0):
        adv = noise.adv_cost + weight * noise.actions[:, 0]  # the signal: push action 0 down
        shares.append(cost_signal_share(module, params,
                                        dataclasses.replace(noise, adv_cost=adv)))
    assert shares[0] < 0.35 < 0.8 < shares[1]


def test_shrinking_scales_the_cost_gradient_and_keeps_the_reward_gradient():
    module = small_policy()
    params = detached(params_of(module))
    gen = torch.Generator().manual_seed(1)
    batch = _with_episodes(random_batch(module, params, gen, n=64, episodes=4), [16] * 4)
    shrunk = shrink_cost_gradient(module, params, batch)
    share = cost_signal_share(module, params, batch)
    assert shrunk.cost_signal_share == share < 1.0

    def grads(b):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        reward, cost = surrogates(module, p, b)
        return [flatten(torch.autograd.grad(x, list(p.values()), retain_graph=True))
                for x in (reward, cost)]

    (g0, b0), (g1, b1) = grads(batch), grads(shrunk)
    torch.testing.assert_close(g1, g0)
    torch.testing.assert_close(b1, share * b0)
    assert shrunk.constraint_value == batch.constraint_value


def test_the_upper_bound_of_j_c_is_the_evaluation_statistics_bound():
    rng = np.random.default_rng(0)
    episodes = [EpisodeData(obs=rng.normal(size=(20, OBS)), actions=rng.normal(size=(20, 2)),
                            logp=np.zeros(20), rewards=rng.normal(size=20),
                            costs=np.r_[np.zeros(19), cost]) for cost in (0.0, 0.0, 12.0, 3.0)]
    mean = make_batch(episodes, cost_limit=5.0)
    upper = make_batch(episodes, cost_limit=5.0, cost_upper_bound=True)
    stats = cost_stats([0.0, 0.0, 12.0, 3.0])
    assert mean.constraint_value == pytest.approx(stats.mean - 5.0)
    assert upper.constraint_value == pytest.approx(stats.ucb - 5.0)
    assert upper.constraint_value > 0 > mean.constraint_value  # mean 3.75 < 5 < bound
    assert upper.ep_lengths.tolist() == [20] * 4
    one = make_batch(episodes[2:3], cost_limit=5.0, cost_upper_bound=True)
    assert one.constraint_value == pytest.approx(7.0)  # one episode: its own cost


def test_recover_when_violating_turns_case_1_into_the_recovery_step():
    q, r, s, c, delta = 1.0, 0.0, 1.0, 0.5, 0.5  # g ⟂ b, the plane meets the trust region
    assert classify(q, r, s, c, delta, 1.0) == CASE_RECOVERY
    assert classify(q, r, s, c, delta, 1.0, recover_when_violating=True) == CASE_INFEASIBLE
    assert classify(q, r, s, -c, delta, 1.0, recover_when_violating=True) != CASE_INFEASIBLE


def test_meta_gradient_is_exact_through_the_safety_corrections():
    """Central finite differences of the query objectives with all three corrections on:
    shrunk cost gradients and upper-bound c in the batches, recovery steps for the
    violating task (its batches cost 2 against a limit of 1)."""
    module = small_policy()
    cfg = UpdateConfig(inner_steps=2, constrained=True, metric="fisher", inner_delta=0.01,
                       cg_iters=80, cg_damping=0.01, cg_tol=1e-26,
                       recover_when_violating=True, cost_signal_share=True)
    theta = detached(params_of(module))
    support, query = meta_batches(module, theta, cfg)

    def corrected(batch):
        batch = _with_episodes(batch, [16] * 4)
        batch = dataclasses.replace(batch, cost_estimate=batch.mean_cost + 0.5)
        return shrink_cost_gradient(module, theta, batch)

    support = [[corrected(b) for b in task] for task in support]
    query = [corrected(b) for b in query]
    steps = assert_meta_gradient_matches_finite_differences(module, theta, support, query, cfg)
    assert CASE_INFEASIBLE in [s.case for s in steps]
