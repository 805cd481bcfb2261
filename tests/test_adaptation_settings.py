"""Test-time adaptation settings: J_C pooled over a task's earlier episodes (a batch that saw
no cost after violating ones takes no step), a margin on c learned from the steps' predicted
and realised cost changes, and one adaptation radius for all four algorithms; pure torch
first, then on a real algorithm (PointNav, local Ray)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dataclasses
import math

from metacpo_rllib.evaluation_stats import cost_stats
from metacpo_rllib.optim import EpisodeData, GaussianMLP, UpdateConfig, make_batch, params_of
from metacpo_rllib.optim.cost_estimate import learned_margin
from metacpo_rllib.optim.cpo import CASE_INFEASIBLE, CASE_TRPO
from metacpo_rllib.optim.meta import inner_step
from metacpo_rllib.optim.policy import forward, log_prob

OBS, ACT, STEPS = 3, 2, 25


def _episodes(costs: list[float], seed: int = 0, module: GaussianMLP | None = None
              ) -> list[EpisodeData]:
    """Episodes of STEPS steps, each episode's cost on its last step; log-probs under
    ``module`` (the sampling policy) when given."""
    rng = np.random.default_rng(seed)
    out = []
    for cost in costs:
        obs = rng.normal(size=(STEPS, OBS)).astype(np.float32)
        actions = rng.normal(size=(STEPS, ACT)).astype(np.float32)
        logp = np.zeros(STEPS)
        if module is not None:
            with torch.no_grad():
                mean, log_std = forward(module, params_of(module), torch.as_tensor(obs))
                logp = log_prob(mean, log_std, torch.as_tensor(actions)).numpy()
        out.append(EpisodeData(obs=obs, actions=actions, logp=logp,
                               rewards=rng.normal(size=STEPS),
                               costs=np.r_[np.zeros(STEPS - 1), cost]))
    return out


def test_cost_history_pools_j_c_and_leaves_the_gradients_alone():
    episodes = _episodes([0.0, 2.0, 0.0, 6.0])
    history = [20.0, 30.0, 0.0, 10.0]
    alone = make_batch(episodes, cost_limit=5.0)
    pooled = make_batch(episodes, cost_limit=5.0, cost_history=history)
    upper = make_batch(episodes, cost_limit=5.0, cost_history=history, cost_upper_bound=True)
    assert alone.constraint_value == pytest.approx(2.0 - 5.0)
    assert pooled.constraint_value == pytest.approx(np.mean(history + [0, 2, 0, 6]) - 5.0)
    assert upper.constraint_value == pytest.approx(
        cost_stats(history + [0.0, 2.0, 0.0, 6.0]).ucb - 5.0)
    for field in ("adv_cost", "adv_reward", "ep_costs", "logp"):
        assert torch.equal(getattr(pooled, field), getattr(alone, field)), field
    assert pooled.mean_cost == alone.mean_cost == 2.0  # the batch's own figure is unchanged


def test_a_cost_free_batch_after_violating_ones_takes_no_step():
    """Without the window such a batch has c = −h and no cost gradient: a plain reward step
    (case 4), which is what raised adaptation costs on tasks that had just violated."""
    torch.manual_seed(0)
    module = GaussianMLP(OBS, ACT, hidden=(8,))
    episodes = _episodes([0.0] * 4, module=module)
    cfg = UpdateConfig(inner_steps=1, inner_delta=0.01, recover_when_violating=True)
    theta = params_of(module)
    alone = make_batch(episodes, cost_limit=5.0, cost_upper_bound=True)
    windowed = make_batch(episodes, cost_limit=5.0, cost_upper_bound=True,
                          cost_history=[30.0, 0.0, 12.0, 25.0])
    assert alone.constraint_value == -5.0 and windowed.constraint_value > 0
    assert float(alone.adv_cost.abs().max()) == 0.0  # the batch saw no cost: b = 0
    moved, step = inner_step(module, theta, alone, cfg, create_graph=False)
    stayed, kept = inner_step(module, theta, windowed, cfg, create_graph=False)
    assert step.case == CASE_TRPO and float(step.x.norm()) > 0
    assert kept.case == CASE_INFEASIBLE and float(kept.x.norm()) == 0.0
    for name, value in theta.items():
        assert torch.equal(stayed[name], value)
    assert any(not torch.equal(moved[n], v) for n, v in theta.items())


def test_the_margin_grows_when_a_step_overpromises_and_never_falls_below_zero():
    # predicted a drop of 4, realised a rise of 2: the step overpromised by 6
    assert learned_margin(0.0, realised=2.0, predicted=-4.0, rate=0.5) == pytest.approx(3.0)
    # did 3 better than predicted: the margin falls by rate x 3
    assert learned_margin(3.0, realised=-5.0, predicted=-2.0, rate=0.5) == pytest.approx(1.5)
    assert learned_margin(1.0, realised=-9.0, predicted=0.0, rate=1.0) == 0.0
    assert learned_margin(2.0, realised=7.0, predicted=-1.0, rate=0.0) == 2.0  # off
    assert learned_margin(2.0, realised=7.0, predicted=math.nan, rate=1.0) == 2.0  # no model
    with pytest.raises(ValueError, match="rate"):
        learned_margin(0.0, 1.0, 0.0, rate=-1.0)


def test_the_margin_enters_c_and_can_turn_a_feasible_step_into_recovery():
    torch.manual_seed(0)
    module = GaussianMLP(OBS, ACT, hidden=(8,))
    batch = make_batch(_episodes([0.0, 4.0, 0.0, 4.0], module=module), cost_limit=5.0)
    margined = dataclasses.replace(batch, cost_margin=4.0)
    assert batch.constraint_value == pytest.approx(2.0 - 5.0)
    assert margined.constraint_value == pytest.approx(2.0 + 4.0 - 5.0)
    assert margined.estimated_cost == batch.estimated_cost == pytest.approx(2.0)
    cfg = UpdateConfig(inner_steps=1, inner_delta=0.01, recover_when_violating=True)
    _, free = inner_step(module, params_of(module), batch, cfg, create_graph=False)
    _, held = inner_step(module, params_of(module), margined, cfg, create_graph=False)
    assert free.case != CASE_INFEASIBLE and held.case == CASE_INFEASIBLE


def test_the_adaptation_radius_replaces_both_radii():
    import metacpo_rllib.rllib as rl

    config = rl.MetaCPOConfig().training(inner_delta=0.003, trust_region_delta=0.01,
                                         adaptation_cost_free_scale=1.0,
                                         adaptation_recovery_scale=1.0)
    # the longer outer recovery and the shorter cost-free inner step are training's:
    # adaptation steps scale by their own factors
    assert config.update_config().outer_recovery_scale == 3.0
    assert config.update_config().inner_cost_free_scale == 0.25
    assert config.adaptation_update_config().outer_recovery_scale == 1.0
    assert config.adaptation_update_config().inner_cost_free_scale == 1.0
    config.training(outer_recovery_scale=1.0, inner_cost_free_scale=1.0)
    assert config.adaptation_update_config() == config.update_config()
    assert config.adaptation_update_config(cost_free=True, violating=True) == \
        config.update_config()  # both factors 1: every step at the adaptation radius
    config.training(adaptation_delta=0.02)
    adapt, train = config.adaptation_update_config(), config.update_config()
    assert (adapt.inner_delta, adapt.delta) == (0.02, 0.02)
    assert (train.inner_delta, train.delta) == (0.003, 0.01)  # training keeps its radii
    assert config.adaptation_update_config(cost_free=True) == adapt  # scale 1: unchanged
    config.training(adaptation_cost_free_scale=0.25)
    free = config.adaptation_update_config(cost_free=True)
    assert (free.inner_delta, free.delta) == pytest.approx((0.005, 0.005))
    assert config.adaptation_update_config() == adapt
    config.training(adaptation_recovery_scale=3.0)
    recovery = config.adaptation_update_config(violating=True)
    assert (recovery.inner_delta, recovery.delta) == pytest.approx((0.06, 0.06))
    assert config.adaptation_update_config(cost_free=True, violating=True).delta == \
        pytest.approx(0.015)


@pytest.mark.usefixtures("ray_local")
def test_adapt_reports_the_pooled_j_c_and_steps_at_the_adaptation_radius():
    """On a real algorithm: with a window longer than the run (and the mean as J_C), the
    J_C of step s is the running mean of the task's batch costs so far; each task's margin
    follows its steps' predicted and realised batch-cost changes; a larger adaptation
    radius gives larger steps (KL of the steps in the ledger); the learning batches have
    ``adaptation_episodes_per_task`` episodes per task (None: the training batch's)."""
    import metacpo_rllib.rllib as rl

    def build(**fields):
        return (rl.MetaCPOConfig().environment("PointNav")
                .training(tasks_per_iteration=2, episodes_per_task=3, seed=0,
                          cost_upper_bound=False, adaptation_cost_free_scale=1.0,
                          adaptation_recovery_scale=1.0, **fields).build_algo())

    rate = 0.5
    algo = build(adaptation_cost_window=1000, adaptation_cost_margin_rate=rate,
                 adaptation_episodes_per_task=5)
    tasks, report = _adapt_three_steps(algo)
    for task in report["tasks"]:
        running = np.cumsum(task["cost"]) / np.arange(1, len(task["cost"]) + 1)
        np.testing.assert_allclose(task["cost_estimate"], running, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(task["cost_margin"], _learned_margins(task, rate),
                                   rtol=1e-5, atol=1e-5)
    assert any(t["cost_estimate"][-1] != pytest.approx(t["cost"][-1]) for t in report["tasks"])
    assert any(max(t["cost_margin"]) > 0 for t in report["tasks"])
    assert report["batch_episodes"] == 5
    assert all(t["batch_episodes"] == [5] * 4 for t in report["tasks"])
    kls = {}
    for radius in (0.001, 0.03):
        algo = build(adaptation_delta=radius, adaptation_episodes_per_task=None)
        try:
            result = algo.adapt(tasks, steps=2, eval_episodes=2)
        finally:
            algo.stop()
        kls[radius] = [entry["kl"] for t in result["tasks"] for entry in t["ledger"]]
        assert all(t["batch_episodes"] == [3] * 3 for t in result["tasks"])
    assert max(kls[0.001]) < 0.003
    assert max(kls[0.03]) > 5 * max(kls[0.001])


def test_train_flags_set_the_adaptation_fields():
    from metacpo_rllib import cli

    args = cli.build_parser().parse_args(
        ["train", "--family", "PointNav", "--adaptation-delta", "0.02",
         "--adaptation-cost-window", "8", "--adaptation-cost-free-scale", "0.5",
         "--adaptation-recovery-scale", "2", "--adaptation-cost-margin-rate", "0.25",
         "--adaptation-cost-room", "0.5", "--adaptation-backtracks", "3",
         "--adaptation-backtrack-bound", "--adaptation-backtrack-fresh",
         "--adaptation-limit-margin", "0.3", "--adaptation-first-episodes", "96"])
    config = cli.build_config(args)
    assert (config.adaptation_delta, config.adaptation_cost_window,
            config.adaptation_cost_free_scale, config.adaptation_recovery_scale,
            config.adaptation_cost_margin_rate, config.adaptation_cost_room,
            config.adaptation_backtracks, config.adaptation_backtrack_bound,
            config.adaptation_backtrack_fresh, config.adaptation_limit_margin,
            config.adaptation_first_episodes_per_task) == (
        0.02, 8, 0.5, 2.0, 0.25, 0.5, 3, True, True, 0.3, 96)
    assert config.adaptation_update_config().cost_room == 0.5
    default = cli.build_config(cli.build_parser().parse_args(["train", "--family", "PointNav"]))
    assert (default.adaptation_episodes_per_task, default.adaptation_delta,
            default.adaptation_cost_window, default.adaptation_cost_free_scale,
            default.adaptation_recovery_scale, default.adaptation_cost_margin_rate,
            default.adaptation_cost_room, default.adaptation_backtracks,
            default.adaptation_backtrack_bound, default.adaptation_backtrack_fresh,
            default.adaptation_limit_margin, default.adaptation_first_episodes_per_task) == (
        32, None, 64, 0.125, 6.0, 0.0, 0.0, 0, False, False, 0.0, None)


def _adapt_three_steps(algo):
    """(tasks, report): ``algo`` adapted 3 steps on 2 PointNav ``test_tight`` tasks, then
    stopped."""
    try:
        tasks = algo.family.sample_tasks(2, "test_tight", seed=4)
        return tasks, algo.adapt(tasks, steps=3, eval_episodes=2)
    finally:
        algo.stop()


def _learned_margins(task, rate):
    """The learned margin before each of ``task``'s batches, replayed from its report:
    each step's realised batch-cost change against its predicted one."""
    margins = [0.0]
    for s, entry in enumerate(task["ledger"]):
        margins.append(learned_margin(margins[-1], task["cost"][s + 1] - task["cost"][s],
                                      entry["predicted_cost_change"], rate))
    return margins


def test_the_adaptation_limit_margin_aims_every_step_below_h():
    """``adaptation_limit_margin`` f: every adaptation batch's c carries f·h on top of the
    learned margin (so J_C between (1 − f)·h and h is violating), while the reported
    costs, violations and the cost limit stay those against h."""
    import metacpo_rllib.rllib as rl

    rate, f = 0.5, 0.4
    _, report = _adapt_three_steps(
        rl.MetaCPOConfig().environment("PointNav")
        .training(tasks_per_iteration=2, episodes_per_task=3, seed=0, cost_upper_bound=False,
                  adaptation_cost_window=1000, adaptation_cost_margin_rate=rate,
                  adaptation_limit_margin=f, adaptation_episodes_per_task=5).build_algo())
    for task in report["tasks"]:
        h = task["cost_limit"]
        assert h == 5.0
        np.testing.assert_allclose(task["cost_margin"],
                                   [f * h + m for m in _learned_margins(task, rate)],
                                   rtol=1e-5, atol=1e-5)
        assert task["violation"] == [float(c > h) for c in task["cost"]]
