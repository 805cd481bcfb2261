"""The exact meta-gradient, the Fisher products and the one-code-path update (pure torch)."""
import dataclasses

import pytest
import torch

from metacpo_rllib.optim import Batch, GaussianMLP, UpdateConfig, meta_update, params_of
from metacpo_rllib.optim import implicit, linalg, meta
from metacpo_rllib.optim.meta import adapt, inner_steps, meta_gradients, query_objectives
from metacpo_rllib.optim.policy import detached, flatten, forward, log_prob, unflatten
from metacpo_rllib.optim.surrogate import fisher_product, fisher_vector_product, mean_kl

OBS, ACT = 3, 2


def small_policy(seed=0):
    torch.manual_seed(seed)
    module = GaussianMLP(OBS, ACT, hidden=(6,)).double()
    with torch.no_grad():  # a non-trivial mean head (the default init is nearly zero)
        module.mean.weight.normal_(0.0, 0.5)
    return module


def random_batch(module, params, gen, n=64, episodes=4, task_id=0, cost_limit=1.0, cost=2.0):
    """A batch 'sampled' by ``params``: actions from the policy, logp recorded."""
    obs = torch.randn(n, OBS, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        mean, log_std = forward(module, params, obs)
        actions = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=gen,
                                                          dtype=torch.float64)
        logp = log_prob(mean, log_std, actions)
    return Batch(obs=obs, actions=actions, logp=logp,
                 adv_reward=torch.randn(n, generator=gen, dtype=torch.float64),
                 adv_cost=torch.randn(n, generator=gen, dtype=torch.float64),
                 ep_returns=torch.zeros(episodes, dtype=torch.float64),
                 ep_costs=torch.full((episodes,), cost, dtype=torch.float64),
                 task_id=task_id, cost_limit=cost_limit)


def meta_batches(module, theta, cfg, tasks=2, seed=0):
    """Support batches sampled along the adaptation path (as the real pipeline does)."""
    gen = torch.Generator().manual_seed(seed)
    support, query = [], []
    for i in range(tasks):
        phi, batches = theta, []
        for _ in range(cfg.inner_steps):
            batches.append(random_batch(module, phi, gen, task_id=i, cost=1.0 + i))
            phi, _ = adapt(module, phi, batches[-1:], cfg)
        support.append(batches)
        query.append(random_batch(module, phi, gen, task_id=i, cost=1.0 + i))
    return support, query


def test_fisher_vector_product_equals_the_kl_hessian():
    module = small_policy()
    params = detached(params_of(module))
    obs = torch.randn(32, OBS, dtype=torch.float64)
    tensors = list(params.values())
    kl = mean_kl(module, params, params, obs)
    grad = flatten(torch.autograd.grad(kl, tensors, create_graph=True))
    fvp = fisher_vector_product(module, params, obs)
    for _ in range(3):
        v = torch.randn(grad.numel(), dtype=torch.float64)
        hv = flatten(torch.autograd.grad(grad @ v, tensors, retain_graph=True))
        assert torch.allclose(fvp(v), hv, atol=1e-10)


def test_fisher_product_multiplies_each_column_by_its_own_items_fisher():
    """Items with their own parameters and their own (unequal) numbers of states."""
    module = small_policy()
    theta = detached(params_of(module))
    gen = torch.Generator().manual_seed(3)
    params = [theta, {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                      for k, v in theta.items()}, theta]
    obs = [torch.randn(n, OBS, generator=gen, dtype=torch.float64) for n in (32, 20, 7)]
    block = torch.randn(flatten(theta).numel(), 3, generator=gen, dtype=torch.float64)
    product = fisher_product(module, params, obs)
    expected = torch.stack([fisher_vector_product(module, p, o)(block[:, j])
                            for j, (p, o) in enumerate(zip(params, obs))], dim=1)
    torch.testing.assert_close(product(block), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(product.without_graph(block), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="block"):
        product(block[:, :2])


@pytest.mark.parametrize("metric", ["euclidean", "fisher"])
def test_inner_steps_of_several_tasks_equal_each_task_alone(metric):
    """The batched inner steps (one solve for all tasks) take each task's own step."""
    module = small_policy(2)
    cfg = UpdateConfig(inner_steps=2, metric=metric, cg_iters=30).validate()
    theta = detached(params_of(module))
    support, _ = meta_batches(module, theta, cfg, tasks=3, seed=4)
    starts = [theta] + [adapt(module, theta, s[:1], cfg)[0] for s in support[1:]]
    batches = [s[1] for s in support]
    together, steps = inner_steps(module, starts, batches, cfg, create_graph=False)
    for phi, start, batch, step in zip(together, starts, batches, steps):
        alone, alone_step = adapt(module, start, [batch], cfg)
        assert step.case == alone_step[0].case
        torch.testing.assert_close(flatten(phi), flatten(alone), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "fisher"])
@pytest.mark.parametrize("constrained", [True, False])
def test_meta_gradient_matches_central_finite_differences(metric, constrained):
    module = small_policy()
    cfg = UpdateConfig(inner_steps=2, constrained=constrained, metric=metric,
                       inner_delta=0.01 if metric == "fisher" else 0.005, cg_iters=80,
                       cg_damping=0.01, cg_tol=1e-26)  # CG converged: the exact solve
    theta = detached(params_of(module))
    support, query = meta_batches(module, theta, cfg)
    steps = assert_meta_gradient_matches_finite_differences(module, theta, support, query, cfg)
    assert len(steps) == 4


def assert_meta_gradient_matches_finite_differences(module, theta, support, query, cfg):
    """The meta-gradients g, b of ``meta_gradients`` against central finite differences of
    the query objectives, along random directions and two coordinate axes; returns the
    inner steps."""
    _, _, g, b, steps = meta_gradients(module, theta, support, query, cfg)
    flat = flatten(theta).detach()

    def objectives(vector):
        p = detached(unflatten(vector, theta))
        reward, cost, _ = query_objectives(module, p, support, query, cfg, create_graph=False)
        return torch.stack([reward.detach(), cost.detach()])

    gen = torch.Generator().manual_seed(1)
    directions = torch.cat([torch.randn(4, flat.numel(), generator=gen, dtype=torch.float64),
                            torch.eye(flat.numel(), dtype=torch.float64)[:2]])
    eps = 1e-5
    fd = torch.stack([(objectives(flat + eps * u) - objectives(flat - eps * u)) / (2 * eps)
                      for u in directions])
    assert torch.allclose(directions @ g, fd[:, 0], rtol=1e-5, atol=1e-7)
    if cfg.constrained:
        assert torch.allclose(directions @ b, fd[:, 1], rtol=1e-5, atol=1e-7)
    else:
        assert b is None
    return steps


def test_first_order_gradient_is_the_gradient_at_the_adapted_parameters():
    module = small_policy()
    exact_cfg = UpdateConfig(inner_steps=1, metric="euclidean", inner_delta=0.05)
    fo_cfg = dataclasses.replace(exact_cfg, first_order=True)
    theta = detached(params_of(module))
    support, query = meta_batches(module, theta, exact_cfg)
    _, _, g_exact, _, _ = meta_gradients(module, theta, support, query, exact_cfg)
    _, _, g_fo, _, _ = meta_gradients(module, theta, support, query, fo_cfg)
    expected = 0
    for task_support, task_query in zip(support, query):
        phi, _ = adapt(module, theta, task_support, fo_cfg)
        reward, _, _ = query_objectives(module, phi, [[]], [task_query],
                                        dataclasses.replace(fo_cfg, inner_steps=0), False)
        expected = expected + flatten(torch.autograd.grad(reward, list(phi.values()))) / 2
    assert torch.allclose(g_fo, expected, atol=1e-10)
    assert not torch.allclose(g_fo, g_exact, atol=1e-6)


@pytest.mark.parametrize("inner_steps, constrained", [(0, True), (0, False), (1, True), (2, False)])
def test_one_code_path_for_the_four_algorithms(inner_steps, constrained):
    module = small_policy()
    cfg = UpdateConfig(inner_steps=inner_steps, constrained=constrained, metric="fisher",
                       delta=0.01, inner_delta=0.01)
    theta = detached(params_of(module))
    support, query = meta_batches(module, theta, cfg, tasks=3)
    new, info = meta_update(module, theta, support, query, cfg)
    assert set(new) == set(theta)
    assert all(torch.isfinite(torch.tensor(v)) for v in info.values())
    assert info["outer_case"] in ({0, 1, 2, 3} if constrained else {4})
    if info["line_search_accepted"]:
        assert not torch.equal(flatten(new), flatten(theta))
        assert info["outer_kl"] <= cfg.delta * (1 + 1e-6)
        if info["outer_case"] != 0:
            assert info["outer_surrogate_reward_change"] > 0
    else:
        assert torch.equal(flatten(new), flatten(theta))
    assert ("inner_case_0" in info) == (inner_steps > 0)


def test_update_config_validation_names_the_field():
    for field, value in [("inner_steps", -1), ("delta", 0.0), ("inner_delta", float("nan")),
                         ("metric", "l1"), ("backend", "scs"), ("cg_iters", 0),
                         ("line_search_decay", 1.0), ("constrained", "yes"),
                         ("fisher_stride", 0), ("fisher_stride", 1.5)]:
        with pytest.raises(ValueError, match=field):
            UpdateConfig(**{field: value}).validate()
    with pytest.raises(ValueError, match="backend"):
        UpdateConfig(backend="cvxpylayers_primal", metric="fisher").validate()


def count_solves(monkeypatch, solves: list) -> None:
    """Append to ``solves`` at every conjugate-gradient call of the update."""
    real = linalg.conjugate_gradient
    for module in (meta, implicit):
        monkeypatch.setattr(module, "conjugate_gradient",
                            lambda *a, **k: solves.append(1) or real(*a, **k))


@pytest.mark.parametrize("constrained", [True, False])
def test_replayed_inner_step_reuses_its_solve_and_changes_nothing(monkeypatch, constrained):
    """The learner's inner steps at θ hand their Fisher solves to meta_update; its replay of
    those steps skips the conjugate gradient and gives the same θ' bit for bit."""
    module = small_policy(3)
    theta = detached(params_of(module))
    cfg = UpdateConfig(inner_steps=1, constrained=constrained, metric="fisher").validate()
    support, query = meta_batches(module, theta, cfg, tasks=3, seed=5)
    # what the learner does in the support round: all tasks' inner steps together
    _, steps = inner_steps(module, [theta] * 3, [s[0] for s in support], cfg,
                           create_graph=False)
    solves = []
    count_solves(monkeypatch, solves)
    new, info = meta_update(module, theta, support, query, cfg,
                            solves=[[step.metric_solution] for step in steps])
    with_solves = len(solves)
    solves.clear()
    ref, ref_info = meta_update(module, theta, support, query, cfg)
    assert torch.equal(flatten(new), flatten(ref))
    assert info == ref_info
    # the tasks' replayed steps share one CG (all tasks' solves together); it is saved
    assert with_solves == len(solves) - 1
    with pytest.raises(ValueError, match="solves: need one per task"):
        inner_steps(module, [theta] * 3, [s[0] for s in support], cfg, create_graph=False,
                    solves=[steps[0].metric_solution])


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_both_reverse_passes_take_the_last_inner_solve_from_one_cg(monkeypatch, inner_steps):
    """meta_gradients solves the objective's and the constraint's reverse-pass blocks of the
    last inner steps together: one CG fewer, the same gradients."""
    module = small_policy(6)
    theta = detached(params_of(module))
    cfg = UpdateConfig(inner_steps=inner_steps, metric="fisher").validate()
    support, query = meta_batches(module, theta, cfg, tasks=3, seed=8)
    solves = []
    count_solves(monkeypatch, solves)

    def gradients():
        solves.clear()
        _, _, g, b, _ = meta_gradients(module, theta, support, query, cfg)
        return g, b, len(solves)

    g, b, ahead = gradients()
    # K forward solves, one for both passes at step K, two per earlier step
    assert ahead == inner_steps + 1 + 2 * (inner_steps - 1)
    monkeypatch.setattr(implicit.ReverseSolve, "solve_pair", lambda self, *blocks: (None, None))
    g_each, b_each, each = gradients()
    assert each == ahead + 1
    torch.testing.assert_close(g, g_each, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b, b_each, rtol=1e-12, atol=1e-14)


def test_fisher_stride_estimates_the_metric_on_every_kth_state():
    from metacpo_rllib.optim.meta import constrained_step

    module = small_policy(4)
    params = detached(params_of(module))
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(40, OBS, generator=gen, dtype=torch.float64)
    g = torch.randn(flatten(params).numel(), generator=gen, dtype=torch.float64)
    b = torch.randn(g.numel(), generator=gen, dtype=torch.float64)
    strided = constrained_step(module, params, g, b, 0.5, 0.01, obs,
                               UpdateConfig(fisher_stride=3), create_graph=False)
    subsample = constrained_step(module, params, g, b, 0.5, 0.01, obs[::3],
                                 UpdateConfig(fisher_stride=1), create_graph=False)
    full = constrained_step(module, params, g, b, 0.5, 0.01, obs,
                            UpdateConfig(fisher_stride=1), create_graph=False)
    assert torch.equal(strided.x, subsample.x)
    assert not torch.allclose(strided.x, full.x)


def test_case_1_step_is_accepted_although_the_reward_surrogate_falls():
    """A violating policy whose reward and cost advantages agree (cosine +1): the recovery-side
    step (case 1) must lower the cost and so also the reward surrogate; the line search
    accepts it instead of rejecting every fraction for want of a reward improvement."""
    module = small_policy()
    theta = detached(params_of(module))
    gen = torch.Generator().manual_seed(11)
    batch = random_batch(module, theta, gen, n=256, cost=1.5, cost_limit=1.0)
    batch = dataclasses.replace(batch, adv_cost=batch.adv_reward.clone())
    cfg = UpdateConfig(inner_steps=0, delta=0.05)
    _, _, g, b, _ = meta_gradients(module, theta, [[]], [batch], cfg)
    step = meta.constrained_step(module, theta, g, b, batch.constraint_value, cfg.delta,
                                 batch.obs, cfg, create_graph=False)
    assert step.case == 1 and float(g @ step.x) < 0  # case 1, the reward surrogate falls
    new, info = meta_update(module, theta, [[]], [batch], cfg)
    assert info["outer_case"] == 1.0
    assert info["line_search_accepted"] == 1.0
    assert info["outer_surrogate_reward_change"] < 0 and info["outer_surrogate_cost_change"] < 0
    assert not torch.equal(flatten(new), flatten(theta))
