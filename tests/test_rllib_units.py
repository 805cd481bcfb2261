"""Pieces of the RLlib layer without Ray running: RLModule, weights, metrics."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns

from helpers import random_episodes
from metacpo_rllib.envs import make_family
from metacpo_rllib.optim import params_of
from metacpo_rllib.optim.policy import forward, log_prob
from metacpo_rllib.rllib.protocol import SampleResult
from metacpo_rllib.rllib.metrics import iteration_metrics, update_metrics
from metacpo_rllib.rllib.module import GaussianMLPModule, params_to_weights, weights_to_params


def _module() -> GaussianMLPModule:
    return GaussianMLPModule(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (6,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        model_config={"policy_hidden": [32, 16], "init_log_std": -0.5},
    )


def test_module_distribution_matches_optim_log_prob():
    torch.manual_seed(0)
    module = _module()
    assert params_of(module.pi)["body.0.weight"].shape == (32, 6)
    assert params_of(module.pi)["body.2.weight"].shape == (16, 32)
    obs = torch.randn(5, 6)
    out = module.forward_exploration({Columns.OBS: obs})
    dist = module.get_exploration_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    actions = dist.sample()
    mean, log_std = forward(module.pi, params_of(module.pi), obs)
    torch.testing.assert_close(dist.logp(actions), log_prob(mean, log_std, actions))


def test_weights_round_trip_through_set_state():
    a, b = _module(), _module()
    with torch.no_grad():
        for p in a.pi.parameters():
            p.add_(1.0)
    weights = params_to_weights(params_of(a.pi))
    assert all(k.startswith("pi.") for k in weights)
    b.set_state(weights)
    for (name, pa), pb in zip(a.pi.named_parameters(), b.pi.parameters()):
        torch.testing.assert_close(pa, pb)
        torch.testing.assert_close(weights_to_params(weights)[name], pa.detach())


def test_metric_names_do_not_depend_on_the_variant():
    outer = {"outer_case": 1.0, "outer_lam": 0.5, "outer_nu": 0.1, "outer_kl": 0.01,
             "line_search_steps": 2.0}
    meta = update_metrics({**outer, "inner_case_4": 2.0, "inner_lam_mean": 1.0,
                           "inner_nu_mean": 0.0, "inner_recoveries": 0.0,
                           **{f"inner_case_{k}": 0.0 for k in range(4)}})
    plain = update_metrics(outer)
    assert set(meta) == set(plain)
    assert plain["outer_case_1"] == 1.0 and plain["outer_recoveries"] == 0.0
    tasks = make_family("PointNav").sample_tasks(2, seed=0)
    summary = [{"mean_return": 1.0, "mean_cost": 12.0, "constraint_cost": 12.5,
                "cost_signal_share": 0.4},
               {"mean_return": 3.0, "mean_cost": 2.0, "constraint_cost": 1.5,
                "cost_signal_share": 1.0}]
    m = iteration_metrics(tasks, [summary, summary], outer, [(1, "node-a"), (2, "node-b")],
                          {"sample_s": 1.0, "learner_s": 2.0, "env_steps": 10})
    assert m["post_violation_rate"] == 0.5 and m["pre_return_mean"] == 2.0
    assert m["per_task"]["runner"] == [1, 2]
    assert m["per_task"]["node_id"] == ["node-a", "node-b"] and m["num_nodes_sampling"] == 2
    assert m["per_task"]["constraint_cost"] == [12.5, 1.5]
    assert m["per_task"]["cost_signal_share"] == [0.4, 1.0]
    assert not math.isnan(m["adaptation_gain"])


def test_learner_rounds_and_dropped_tasks():
    """The Learner protocol without Ray: adapted weights after round 0, a task with a
    non-finite reward is dropped (not the iteration), meta_step changes θ."""
    from metacpo_rllib.rllib.config import MetaCPOConfig

    family = make_family("PointNav", horizon=15)
    env = family.make_env()
    config = MetaCPOConfig().environment("PointNav", env_config={"horizon": 15})
    learner = config.build_learner(spaces={"default_policy": (env.observation_space,
                                                              env.action_space)})
    tasks = family.sample_tasks(3, seed=0)
    samples = [SampleResult(i, t, episodes=random_episodes(family, t, 3, i))
               for i, t in enumerate(tasks)]
    samples[2].episodes[0].rewards[3] = np.nan
    theta = learner.begin(num_tasks=3)
    out = learner.add_round(0, samples)
    assert out.summaries[2] is None and out.weights[2] is None
    assert out.summaries[0]["cost_limit"] == tasks[0].cost_limit
    assert list(out.dropped) == [2] and "rewards" in out.dropped[2]
    for w in out.weights[:2]:
        assert set(w) == set(theta)
        assert any(not np.array_equal(w[k], theta[k]) for k in w)
    query = [SampleResult(i, t, episodes=random_episodes(family, t, 3, 10 + i))
             for i, t in enumerate(tasks[:2])] + [None]
    learner.add_round(1, query)
    info = learner.meta_step()
    assert info["num_tasks_updated"] == 2.0 and "outer_kl" in info
    new_theta = learner.theta_weights()
    if info["line_search_accepted"]:
        assert any(not np.array_equal(new_theta[k], theta[k]) for k in theta)
