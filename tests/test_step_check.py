"""Adaptation steps checked on their policy's fresh episodes and halved or undone where that
policy costs more than its limit and the batch the step learned from
(``optim.step_check``, ``adaptation_backtracks``); pure torch first, then on a real
algorithm (PointNav, local Ray)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metacpo_rllib.optim import EpisodeData, make_batch
from metacpo_rllib.optim.batch import upper_cost_bound
from metacpo_rllib.optim.step_check import PendingStep, between, step_rejected


def test_a_step_is_rejected_only_above_both_the_limit_and_its_batch():
    assert step_rejected(6.0, 4.0, 5.0)        # carried a policy within h over it
    assert step_rejected(9.0, 8.0, 5.0)        # made a violating policy worse
    assert not step_rejected(4.9, 1.0, 5.0)    # rose, but stayed within h
    assert not step_rejected(7.0, 8.0, 5.0)    # still above h, but lower than before
    assert not step_rejected(5.0, 5.0, 5.0)    # at the limit is within it
    # with an upper bound: held to the limit in place of the mean; the rise is the mean's
    assert step_rejected(4.0, 3.0, 5.0, realised_bound=6.5)
    assert not step_rejected(4.0, 4.5, 5.0, realised_bound=6.5)  # it lowered the cost
    assert not step_rejected(6.0, 4.0, 5.0, realised_bound=4.9)


def test_upper_cost_bound_is_the_batch_estimate():
    costs = [0.0, 2.0, 9.0, 1.0]
    estimate = make_batch(_episodes(costs), cost_limit=5.0,
                          cost_upper_bound=True).estimated_cost
    assert upper_cost_bound(costs) == pytest.approx(estimate)
    assert upper_cost_bound(costs) > np.mean(costs)


def _episodes(costs: list[float], steps: int = 4) -> list[EpisodeData]:
    """Episodes of ``steps`` zero steps, each episode's cost on its last step."""
    return [EpisodeData(obs=np.zeros((steps, 2), np.float32),
                        actions=np.zeros((steps, 1), np.float32), logp=np.zeros(steps),
                        rewards=np.zeros(steps), costs=np.r_[np.zeros(steps - 1), c])
            for c in costs]


def _pending(backtracks: int, learned_costs: list[float], limit: float = 5.0) -> PendingStep:
    episodes = _episodes(learned_costs)
    before = {"w": torch.zeros(3), "b": torch.ones(2)}
    after = {"w": torch.tensor([4.0, -8.0, 2.0]), "b": torch.tensor([3.0, 1.0])}
    return PendingStep(before, after, make_batch(episodes, cost_limit=limit), {"case": 3.0},
                       1.0, backtracks)


def test_rejections_halve_the_step_then_undo_it():
    """Backtracks 2: fractions 1 → ½ → ¼, then 0 (the parameters before the step); a step
    whose fresh episodes stay within the limit stands at the fraction it has."""
    pending = _pending(2, [3.0, 5.0])  # the step learned from a batch of mean cost 4
    assert pending.batch.mean_cost == pytest.approx(4.0)
    fractions = []
    for _ in range(3):
        pending = pending.checked(realised_cost=7.0)
        fractions.append(pending.fraction)
        expected = between(pending.before, pending.after, pending.fraction)
        for name, value in pending.params.items():
            assert torch.equal(value, expected[name])
    assert fractions == [0.5, 0.25, 0.0]
    for name in ("w", "b"):
        assert torch.equal(pending.params[name], pending.before[name])
    assert _pending(2, [3.0, 5.0]).checked(realised_cost=4.5) is None
    assert _pending(0, [3.0, 5.0]).checked(realised_cost=7.0).fraction == 0.0


@pytest.mark.parametrize("field", ["adaptation_backtrack_bound", "adaptation_backtrack_fresh"])
def test_a_check_option_without_backtracks_is_refused_naming_the_field(field):
    import metacpo_rllib.rllib as rl

    config = rl.MetaCPOConfig().environment("PointNav").training(**{field: True})
    with pytest.raises(ValueError, match=f"{field}: needs"):
        config.validate()
    config.training(adaptation_backtracks=1).validate()


def test_between_moves_the_given_fraction_of_the_way_and_makes_new_leaves():
    before = {"w": torch.zeros(2, requires_grad=True)}
    after = {"w": torch.tensor([2.0, -4.0], requires_grad=True)}
    half = between(before, after, 0.5)["w"]
    assert torch.equal(half, torch.tensor([1.0, -2.0]))
    assert half.is_leaf and half.requires_grad and half.grad_fn is None


def _adapt(tasks=None, **fields):
    """A PointNav Meta-CPO (untrained θ) with long adaptation steps, adapted 3 steps to 4
    `test` tasks at h = 3 (or to ``tasks``); returns (tasks, report, horizon)."""
    import metacpo_rllib.rllib as rl

    algo = (rl.MetaCPOConfig().environment("PointNav")
            .training(tasks_per_iteration=2, episodes_per_task=4, seed=0,
                      adaptation_delta=2.0, adaptation_episodes_per_task=4,
                      adaptation_recovery_scale=1.0, **fields).build_algo())
    try:
        tasks = tasks or [t.with_cost_limit(3.0)
                          for t in algo.family.sample_tasks(4, "test", seed=3)]
        return tasks, algo.adapt(tasks, steps=3, eval_episodes=2), algo.family.horizon
    finally:
        algo.stop()


def _checked_steps(report, backtracks: int, bounded: bool) -> int:
    """Assert each step's record against the check and return the rejections: ½ of the
    step per rejection and 0 (not accepted) once the backtracks are used up; the batch a
    kept step's policy sampled passes the check (with ``bounded``, its upper bound, the
    batch's own J_C estimate without a J_C window)."""
    rejected = 0
    for task in report["tasks"]:
        h, cost, estimate = task["cost_limit"], task["cost"], task["cost_estimate"]
        for entry in task["ledger"]:
            s, count = entry["step"], int(entry["rejections"])
            rejected += count
            fraction = 0.5 ** count if count <= backtracks else 0.0
            assert entry.get("fraction", 1.0) == pytest.approx(fraction)
            assert entry["accepted"] == (0.0 if fraction == 0 else 1.0)
            if fraction > 0:
                bound = estimate[s + 1] if bounded else None
                assert bound is None or bound >= cost[s + 1]
                assert not step_rejected(cost[s + 1], cost[s], h, bound)
    return rejected


def _episodes_spent(report, deciding_steps: int = 0) -> int:
    """Whole episodes sampled in an adaptation: the kept learning batches (each its own
    size), then 4-episode batches: one deciding batch per task and checked step
    (``deciding_steps`` of them, with ``adaptation_backtrack_fresh``) and every rejected one."""
    kept = sum(sum(t["batch_episodes"]) for t in report["tasks"])
    deciding = 4 * deciding_steps * len(report["tasks"])
    return kept + deciding + 4 * int(sum(report["rejections"]))


def _fresh_batches_learned(checked, fresh, horizon: int) -> None:
    """With ``adaptation_backtrack_fresh`` (same seed and tasks as ``checked``): the first
    batch and the first step's check are the same, but the step after it learns from a
    new batch, and every batch that decided a step counts as env steps spent."""
    pairs = list(zip(checked["tasks"], fresh["tasks"]))
    assert all(c["cost"][0] == f["cost"][0] for c, f in pairs)
    assert all(c["ledger"][0]["rejections"] == f["ledger"][0]["rejections"] for c, f in pairs)
    assert any(c["cost"][1] != f["cost"][1] for c, f in pairs)
    assert fresh["time_s"]["env_steps"] == horizon * _episodes_spent(fresh, deciding_steps=3)


@pytest.mark.usefixtures("ray_local")
def test_adapt_keeps_only_steps_whose_next_batch_passes_the_check():
    """On a real algorithm with long steps at a tight limit: every step's record says how
    often it was rejected and the fraction that stood, the batch each kept step's policy
    sampled passes the check (mean, or upper bound with ``adaptation_backtrack_bound``),
    rejected batches' env steps are counted and tabulated, and steps here are rejected;
    with ``adaptation_backtrack_fresh`` the next step learns from a batch sampled after
    the check; without backtracks no step is checked."""
    from metacpo_rllib.cli_support import adaptation_table

    tasks, report, horizon = _adapt(adaptation_backtracks=2)
    rejected = _checked_steps(report, 2, bounded=False)
    assert rejected > 0 and sum(report["rejections"]) == rejected
    assert report["time_s"]["env_steps"] == horizon * _episodes_spent(report)
    [row] = [line for line in adaptation_table(report).splitlines()
             if line.startswith(" rejected")]
    assert sum(float(v) for v in row.split()[1:]) == rejected
    _, bounded, _ = _adapt(tasks, adaptation_backtracks=2, adaptation_backtrack_bound=True,
                           adaptation_cost_window=0)
    assert _checked_steps(bounded, 2, bounded=True) > 0
    _, fresh, _ = _adapt(tasks, adaptation_backtracks=2, adaptation_backtrack_fresh=True)
    _fresh_batches_learned(report, fresh, horizon)
    _, plain, _ = _adapt(tasks)
    assert "rejections" not in plain
    assert all("rejections" not in e for t in plain["tasks"] for e in t["ledger"])
    assert "rejected" not in adaptation_table(plain)
    assert not math.isnan(plain["eval"]["mean_cost"][-1])


@pytest.mark.usefixtures("ray_local")
def test_a_larger_first_batch_is_only_the_first():
    """``adaptation_first_episodes_per_task`` sizes the first learning batch (θ's) alone:
    the checked and fresh batches after it keep ``adaptation_episodes_per_task``, all of
    them count as env steps spent, and the table's heading names both sizes."""
    from metacpo_rllib.cli_support import adaptation_table

    _, report, horizon = _adapt(adaptation_backtracks=2, adaptation_backtrack_fresh=True,
                                adaptation_first_episodes_per_task=9)
    assert all(t["batch_episodes"] == [9, 4, 4, 4] for t in report["tasks"])
    assert (report["first_batch_episodes"], report["batch_episodes"]) == (9, 4)
    assert report["time_s"]["env_steps"] == horizon * _episodes_spent(report, deciding_steps=3)
    assert ("learning batches (9 episodes per task at step 0, then 4 episodes per task and "
            "step" in adaptation_table(report))
