"""evaluation_stats: t quantiles, cost bounds (with the zero-variance case), their coverage on a
toy CMDP with a known cost distribution, summaries across seeds and the calibration table."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metacpo_rllib.envs import make_family
from metacpo_rllib.envs.base import Task
from metacpo_rllib.evaluation_stats import (
    across_seeds,
    calibration_markdown,
    calibration_table,
    cost_stats,
    format_pm,
    no_excess_probability_bound,
    pooled_cost_stats,
    t95,
)
from metacpo_rllib.optim import GaussianMLP
from metacpo_rllib.rllib.episodes import evaluation_seed, numpy_policy, rollout


def test_t95_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 19, 29, 30, 31, 45, 100, 1000):
        assert t95(df) == pytest.approx(stats.t.ppf(0.95, df), abs=2e-6)
    with pytest.raises(ValueError):
        t95(0)


def test_cost_stats_t_bound():
    costs = [0.0, 3.0, 0.0, 9.0, 1.0, 0.0, 0.0, 2.0]
    s = cost_stats(costs, cost_bound=100.0)
    x = np.array(costs)
    assert s.n == 8 and s.mean == pytest.approx(x.mean())
    assert s.se == pytest.approx(x.std(ddof=1) / math.sqrt(8))
    assert s.ucb == pytest.approx(x.mean() + 1.894579 * s.se)
    assert s.within(2.0) and not s.within(1.5)
    assert s.certified(s.ucb) and not s.certified(s.ucb - 1e-9)


def test_zero_variance_is_not_certainty():
    """All episodes without cost: the bound is the rule-of-three one, not 0."""
    s = cost_stats([0.0] * 20, cost_bound=500.0)
    assert s.mean == 0.0 and s.se == 0.0
    p = 1 - 0.05 ** (1 / 20)
    assert no_excess_probability_bound(20) == pytest.approx(p)
    assert s.ucb == pytest.approx(p * 500.0)            # ≈ 69.6: 20 clean episodes of 500 steps
    assert not s.certified(5.0) and s.within(5.0)
    assert cost_stats([0.0] * 20).ucb == math.inf      # no bound on an episode's cost
    one = cost_stats([3.0], cost_bound=10.0)
    assert math.isnan(one.se) and one.ucb == pytest.approx(3.0 + 0.95 * 7.0)
    bad = cost_stats([1.0, math.nan])
    assert math.isnan(bad.mean) and math.isnan(bad.ucb)
    assert cost_stats([]).n == 0 and not cost_stats([]).within(5.0)


def test_pooled_bound_keeps_each_tasks_width():
    clean, noisy = [0.0] * 10, [0.0, 4.0, 0.0, 8.0, 2.0, 0.0, 0.0, 6.0, 0.0, 0.0]
    a, b = cost_stats(clean, 60.0), cost_stats(noisy, 60.0)
    pooled = pooled_cost_stats([clean, noisy], cost_bound=60.0)
    assert pooled.mean == pytest.approx((a.mean + b.mean) / 2)
    assert pooled.n == 20
    assert pooled.ucb == pytest.approx(
        pooled.mean + math.hypot(a.ucb - a.mean, b.ucb - b.mean) / 2)
    # never narrower than the clean task alone allows
    assert pooled.ucb - pooled.mean >= (a.ucb - a.mean) / 2


def _bandit_costs(cost_mean: float, trials: int, episodes: int) -> np.ndarray:
    """Episode costs of a fixed policy on a bandit whose arms all cost Bernoulli(cost_mean)
    per pull: episode cost ~ Binomial(horizon, cost_mean), whatever the policy does."""
    family = make_family("ConstrainedBandit", num_arms=3, horizon=20)
    task = Task("ConstrainedBandit", {"reward_means": [0.2, 0.5, 0.8],
                                      "cost_means": [cost_mean] * 3}, 5.0)
    env = family.make_env(task)
    torch.manual_seed(0)
    policy = numpy_policy(GaussianMLP(1, 3))
    out = np.empty((trials, episodes))
    for trial in range(trials):
        seed = evaluation_seed(trial, task.to_dict())
        data, _, _ = rollout([env], policy, episodes, seed, env.action_space.low,
                             env.action_space.high)
        out[trial] = [d.costs.sum() for d in data]
    return out


@pytest.mark.parametrize("cost_mean", [0.005, 0.1])
def test_upper_bound_covers_the_true_mean(cost_mean):
    """200 trials of 20 evaluation episodes: the one-sided 95% bound covers the known mean
    episode cost (horizon × cost_mean) in >= 90% of them. At cost_mean = 0.005 most episodes
    cost 0 and 13% of the trials see no cost at all: a t bound that trusted a zero variance
    would miss there (checked too)."""
    horizon, trials = 20, 200
    costs = _bandit_costs(cost_mean, trials, 20)
    true_mean = horizon * cost_mean
    assert costs.mean() == pytest.approx(true_mean, rel=0.25)  # the distribution is as stated
    bounds = np.array([cost_stats(row, cost_bound=float(horizon)).ucb for row in costs])
    coverage = float(np.mean(bounds >= true_mean))
    assert coverage >= 0.90, coverage
    naive = np.array([row.mean() + t95(19) * row.std(ddof=1) / math.sqrt(20) for row in costs])
    if cost_mean < 0.01:
        assert float(np.mean(naive >= true_mean)) < 0.90   # what the zero-variance rule fixes
    else:
        assert np.allclose(bounds, naive)                   # otherwise the plain t bound


def test_across_seeds_shows_no_spread_for_one_seed():
    one = across_seeds([3.0])
    assert one["mean"] == 3.0 and math.isnan(one["std"]) and one["n"] == 1
    assert format_pm(one) == "3.00"
    three = across_seeds([1.0, 2.0, math.nan, 3.0])
    assert three == {"mean": 2.0, "std": 1.0, "n": 3}
    assert format_pm(three) == "2.00 ± 1.00"
    assert format_pm(across_seeds([])) == "n/a"


def test_calibration_table():
    entries = [
        {"case": 1.0, "predicted_cost_change": -2.0, "realised_cost_change": -1.0},
        {"case": 1.0, "predicted_cost_change": -4.0, "realised_cost_change": 2.0},
        {"case": 1.0, "predicted_cost_change": -1.0, "realised_cost_change": 0.0},
        {"case": 3.0, "predicted_cost_change": 0.5, "realised_cost_change": 1.0},
        {"case": 4.0, "predicted_cost_change": math.nan, "realised_cost_change": 1.0},
    ]
    table = calibration_table(entries)
    assert list(table) == ["1", "3", "all"]
    one = table["1"]
    assert one["n"] == 3 and one["n_signed"] == 2 and one["n_realised_zero"] == 1
    assert one["sign_agreement"] == pytest.approx(0.5)
    assert one["ratio_median"] == pytest.approx(0.0)      # ratios 0.5, -0.5, 0
    assert one["slope"] == pytest.approx((2.0 - 8.0 + 0.0) / (4 + 16 + 1))
    assert table["3"]["sign_agreement"] == 1.0 and table["3"]["ratio_median"] == 2.0
    assert table["all"]["n"] == 4
    text = calibration_markdown(table)
    assert text.count("\n") == 2 + 3 and "| 1: violating, feasible step exists | 3 |" in text


def test_verdict_names_the_steps_over_the_limit_and_the_return_change():
    from metacpo_rllib.cli_support import verdict

    report = {"steps": [0, 1, 2],
              "tasks": [{"cost_limit": 5.0, "eval": {"cost": [9.0, 1.0, 2.0]}},
                        {"cost_limit": 5.0, "eval": {"cost": [0.0, 6.0, 5.0]}}],
              "eval": {"mean_return": [1.0, 2.0, 3.5]}}
    assert verdict(report) == ("verdict: over the limit on some task after step(s) 1 "
                               "(1/2 tasks within at the worst step); return 1.00 -> 3.50 "
                               "(evaluation episodes)")
    report["tasks"][1]["eval"]["cost"][1] = 5.0  # at the limit counts as within
    assert verdict(report).startswith(
        "verdict: within the limit on every task at every adaptation step;")
