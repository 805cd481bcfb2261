"""An honest learning test: a short seeded Meta-CPO run on PointNav raises post-adaptation return
and keeps most tasks' cost within the limit."""
from __future__ import annotations


import pytest

from metacpo_rllib.rllib import MetaCPOConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ITERATIONS = 20
FAMILY_LIMIT = 10.0   # PointNav's train-split cost limit (what the check uses)
TRAIN_LIMIT = 4.0     # what the run trains for: a safety margin, see the docstring
#: The plain CPO step this test measures (the default safety corrections trade most of
#: this return for holding the limit: docs/SAFETY_ABLATION.md).
TEXTBOOK_STEP = dict(cost_signal_share=False, cost_upper_bound=False,
                     recover_when_violating=False)


def test_meta_cpo_learns_pointnav_within_the_limit(ray_local):
    """20 meta-iterations (8 tasks x 6 episodes, K=1, horizon 40; ~70 s on 2 cores).

    Measured before and after training on the same 12 held-out training-split tasks
    (6 episodes each): the return after one adaptation step, and the fraction of tasks
    whose post-adaptation mean episode cost exceeds the family's limit h = 10.

    Meta-CPO's constraint bounds the *mean over tasks* of the post-adaptation cost, so
    with the limit itself as target about half the tasks end up above it. The run
    therefore trains with h_train = 4 and is checked against h = 10.
    Observed (seeds 0-3): return after adaptation ~2 -> 6.4-8.9; violation rate
    0.42-0.75 -> 0.08-0.33.
    """
    config = (MetaCPOConfig()
              .environment("PointNav", env_config={"horizon": 40})
              .env_runners(num_env_runners=0)
              .training(tasks_per_iteration=8, episodes_per_task=6, inner_steps=1,
                        trust_region_delta=0.05, inner_delta=0.05,
                        train_cost_limit=TRAIN_LIMIT, seed=0, **TEXTBOOK_STEP))
    algo = config.build_algo()
    try:
        tasks = algo.family.sample_tasks(12, "train", seed=1000)
        assert all(t.cost_limit == FAMILY_LIMIT for t in tasks)
        before = algo.adapt(tasks, steps=1, episodes_per_task=6)
        history = [algo.train()["metacpo"] for _ in range(ITERATIONS)]
        after = algo.adapt(tasks, steps=1, episodes_per_task=6)
    finally:
        algo.stop()
    summary = (f"post-adaptation return {before['mean_return'][1]:.2f} -> "
               f"{after['mean_return'][1]:.2f}, cost {before['mean_cost'][1]:.2f} -> "
               f"{after['mean_cost'][1]:.2f}, violation rate {before['violation_rate'][1]:.2f}"
               f" -> {after['violation_rate'][1]:.2f}; training post-return "
               f"{history[0]['post_return_mean']:.2f} -> {history[-1]['post_return_mean']:.2f}")
    print(summary)
    assert after["mean_return"][1] > before["mean_return"][1] + 3.0, summary
    assert after["violation_rate"][1] < 0.5, summary           # most tasks within h
    assert after["mean_cost"][1] <= FAMILY_LIMIT, summary
