"""Reliability: NaN/inf in a batch (reward, cost, observation) or in a gradient.

The task (or the update) is skipped and counted in the metrics, θ is unchanged by a
skipped update, bad env output is reported with its task id, and nothing raises out of
the Learner or the algorithm.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from helpers import random_episodes
from metacpo_rllib.envs import make_family
from metacpo_rllib.optim import EpisodeData, NonFiniteError, UpdateConfig, cpo_step
from metacpo_rllib.optim.batch import make_batch
from metacpo_rllib.optim.meta import inner_step, meta_update
from metacpo_rllib.optim.policy import GaussianMLP, params_of
from metacpo_rllib.rllib.config import CPOConfig, MetaCPOConfig
from metacpo_rllib.rllib.protocol import SampleResult

HORIZON = 15


def corrupt(eps: list[EpisodeData], field: str, value: float) -> None:
    """Put ``value`` into step 3 of the first episode's ``field``."""
    getattr(eps[0], field)[3] = value


@pytest.fixture(scope="module")
def setup():
    family = make_family("PointNav", horizon=HORIZON)
    env = family.make_env()
    config = MetaCPOConfig().environment("PointNav", env_config={"horizon": HORIZON})
    spaces = {"default_policy": (env.observation_space, env.action_space)}
    return family, config, spaces


def samples_for(family, tasks, seed):
    return [SampleResult(i, t, episodes=random_episodes(family, t, 3, seed + i))
            for i, t in enumerate(tasks)]


# -- optim level -------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["rewards", "costs", "obs"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_bad_env_output_names_field_and_task(setup, field, value):
    family, _, _ = setup
    task = family.sample_tasks(1, seed=3)[0]
    eps = random_episodes(family, task, 2, 0)
    corrupt(eps, field, value)
    with pytest.raises(ValueError, match=rf"{field}: .*task {task.task_id}") as info:
        make_batch(eps, task_id=task.task_id, cost_limit=task.cost_limit)
    assert info.value.task_id == task.task_id and info.value.field == field


@pytest.mark.parametrize("where", ["g", "b"])
def test_nonfinite_gradient_is_a_nonfinite_error(where):
    g, b = torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    (g if where == "g" else b)[1] = math.nan
    with pytest.raises(NonFiniteError, match=where):
        cpo_step(g, b, 0.1, 0.01)


def test_nonfinite_logp_gives_nonfinite_gradient_in_inner_step_and_meta_update(setup):
    """A -inf sampling log-prob makes the importance ratio inf: g and b are non-finite."""
    family, _, _ = setup
    task = family.sample_tasks(1, seed=4)[0]
    eps = random_episodes(family, task, 3, 1)
    corrupt(eps, "logp", -math.inf)
    batch = make_batch(eps, task_id=task.task_id, cost_limit=task.cost_limit)
    policy = GaussianMLP(6, 2)
    cfg = UpdateConfig(inner_steps=1)
    with pytest.raises(NonFiniteError):
        inner_step(policy, params_of(policy), batch, cfg, create_graph=False)
    good = make_batch(random_episodes(family, task, 3, 2), task_id=task.task_id,
                      cost_limit=task.cost_limit)
    with pytest.raises(NonFiniteError):
        meta_update(policy, params_of(policy), [[good]], [batch], cfg)


# -- Learner level (no Ray) --------------------------------------------------------------------
@pytest.mark.parametrize("field", ["rewards", "costs", "obs", "logp"])
def test_learner_drops_the_task_and_updates_with_the_rest(setup, field, caplog):
    family, config, spaces = setup
    learner = config.build_learner(spaces=spaces)
    tasks = family.sample_tasks(3, seed=0)
    samples = samples_for(family, tasks, 0)
    corrupt(samples[1].episodes, field, math.nan if field != "logp" else -math.inf)
    learner.begin(num_tasks=3)
    with caplog.at_level(logging.WARNING):
        out = learner.add_round(0, samples)
    assert out.weights[1] is None and list(out.dropped) == [1]
    assert f"task {tasks[1].task_id}" in out.dropped[1]
    assert f"task {tasks[1].task_id}" in caplog.text
    learner.add_round(1, [s if i != 1 else None
                          for i, s in enumerate(samples_for(family, tasks, 10))])
    info = learner.meta_step()
    assert info["num_tasks_updated"] == 2.0 and info["updates_skipped"] == 0.0


def test_learner_skips_an_update_with_a_nonfinite_meta_gradient(setup):
    family, config, spaces = setup
    learner = config.build_learner(spaces=spaces)
    tasks = family.sample_tasks(2, seed=1)
    theta = learner.begin(num_tasks=2)
    learner.add_round(0, samples_for(family, tasks, 0))
    query = samples_for(family, tasks, 20)
    corrupt(query[0].episodes, "logp", -math.inf)  # finite batch, non-finite gradient
    learner.add_round(1, query)
    info = learner.meta_step()
    assert info == {"num_tasks_updated": 0.0, "updates_skipped": 1.0}
    for key, value in learner.theta_weights().items():
        np.testing.assert_array_equal(value, theta[key])
    # The next iteration runs normally.
    learner.begin(num_tasks=2)
    learner.add_round(0, samples_for(family, tasks, 30))
    learner.add_round(1, samples_for(family, tasks, 40))
    info = learner.meta_step()
    assert info["num_tasks_updated"] == 2.0 and info["updates_skipped"] == 0.0


def test_adaptation_drops_a_task_with_a_nonfinite_gradient(setup):
    family, _, spaces = setup
    config = CPOConfig().environment("PointNav", env_config={"horizon": HORIZON})
    learner = config.build_learner(spaces=spaces)
    tasks = family.sample_tasks(2, seed=2)
    samples = samples_for(family, tasks, 0)
    corrupt(samples[0].episodes, "logp", -math.inf)
    learner.begin(num_tasks=2)
    out = learner.adapt_round(samples, update=True)
    assert out.weights[0] is None and out.weights[1] is not None
    assert list(out.dropped) == [0]


# -- the algorithm (local EnvRunner only) ------------------------------------------------------
@pytest.mark.ray
def test_algorithm_counts_dropped_tasks_and_skipped_updates(ray_local, monkeypatch):
    """Round 0: task 0 gets a NaN reward, task 1 a -inf log-prob (NaN gradient): both are
    dropped. Next iteration: a -inf log-prob in the query round skips the update."""
    import metacpo_rllib.rllib.algorithm as algorithm_module
    from metacpo_rllib.rllib.episodes import sample_jobs

    plan: dict[tuple[int, int], tuple[str, float]] = {}
    calls = {"n": 0}

    def faulty(runner, jobs):
        out = sample_jobs(runner, jobs)
        for result in out["results"]:
            fault = plan.get((calls["n"], result.job))
            if fault:
                corrupt(result.episodes, *fault)
        calls["n"] += 1
        return out

    monkeypatch.setattr(algorithm_module, "sample_jobs", faulty)
    config = (MetaCPOConfig().environment("PointNav", env_config={"horizon": HORIZON})
              .env_runners(num_env_runners=0)
              .training(tasks_per_iteration=3, episodes_per_task=2, seed=0))
    algo = config.build_algo()
    try:
        plan.update({(0, 0): ("rewards", math.nan), (0, 1): ("logp", -math.inf)})
        m = algo.train()["metacpo"]
        assert m["num_tasks_dropped"] == 2 and m["per_task"]["dropped"] == [1, 1, 0]
        assert m["update"]["num_tasks_updated"] == 1.0
        assert m["update"]["updates_skipped"] == 0.0
        theta = algo._on_learner(lambda learner: learner.theta_weights())
        plan.clear()
        plan[(3, 2)] = ("logp", -math.inf)   # iteration 2, query round (call 3), task 2
        m = algo.train()["metacpo"]
        assert m["num_tasks_dropped"] == 0 and m["update"]["updates_skipped"] == 1.0
        for key, value in algo._on_learner(lambda learner: learner.theta_weights()).items():
            np.testing.assert_array_equal(value, theta[key])
        m = algo.train()["metacpo"]  # and training goes on
        assert m["update"]["updates_skipped"] == 0.0 and m["meta_iteration"] == 3
    finally:
        algo.stop()
