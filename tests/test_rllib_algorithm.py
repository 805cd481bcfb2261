"""End-to-end MetaCPO / MetaTRPO / CPO / TRPO on the toy PointNav CMDP with 0 and 2 EnvRunners."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import ray
import torch

from metacpo_rllib.optim import GaussianMLP
from metacpo_rllib.optim.policy import forward, log_prob
from metacpo_rllib.rllib import CPOConfig, MetaCPOConfig, MetaTRPOConfig, TRPOConfig
from metacpo_rllib.rllib.module import weights_to_params

pytestmark = pytest.mark.ray

VARIANTS = {"MetaCPO": MetaCPOConfig, "MetaTRPO": MetaTRPOConfig, "CPO": CPOConfig,
            "TRPO": TRPOConfig}
_KEY_SETS: dict[str, set] = {}


def make_config(cls=MetaCPOConfig, runners: int = 0, horizon: int = 30, **training):
    settings = {"tasks_per_iteration": 2, "episodes_per_task": 2, "seed": 0, **training}
    return (cls().environment("PointNav", env_config={"horizon": horizon})
            .env_runners(num_env_runners=runners).training(**settings))


def flat(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def assert_finite(metrics: dict) -> None:
    for key, value in flat(metrics):
        if key[-1] == "node_id":  # Ray node ids (strings)
            continue
        values = value if isinstance(value, list) else [value]
        assert values and all(math.isfinite(float(v)) for v in values), (key, value)


REQUIRED = [
    ("pre_return_mean",), ("pre_cost_mean",), ("pre_violation_rate",), ("post_return_mean",),
    ("post_cost_mean",), ("post_violation_rate",), ("cost_limit_mean",), ("env_steps_sampled",),
    ("time", "sample_s"), ("time", "learner_s"),
    ("per_task", "pre_return"), ("per_task", "post_cost"), ("per_task", "cost_limit"),
    ("update", "outer_case"), ("update", "outer_lam"), ("update", "outer_nu"),
    ("update", "outer_kl"), ("update", "outer_predicted_reward_change"),
    ("update", "outer_surrogate_reward_change"), ("update", "outer_predicted_cost_change"),
    ("update", "outer_surrogate_cost_change"), ("update", "line_search_steps"),
    ("update", "inner_case_0"), ("update", "inner_recoveries"), ("update", "outer_recoveries"),
    ("update", "inner_lam_mean"), ("update", "inner_nu_mean"),
]


@pytest.mark.parametrize("runners", [0, 2])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_iterations_end_to_end(ray_local, variant, runners):
    algo = make_config(VARIANTS[variant], runners).build_algo()
    try:
        for _ in range(2):
            results = algo.train()
        m = results["metacpo"]
        assert results["training_iteration"] == 2 and m["meta_iteration"] == 2
        keys = {k for k, _ in flat(m)}
        assert set(REQUIRED) <= keys
        assert_finite(m)
        k = 1 if variant.startswith("Meta") else 0
        assert m["env_steps_sampled"] == 2 * 2 * 30 * (k + 1)
        assert results["num_env_steps_sampled_lifetime"] >= 2 * m["env_steps_sampled"]
        expected_runners = {1, 2} if runners else {0}
        assert set(m["per_task"]["runner"]) == expected_runners
        # Same metric names for all four variants.
        reference = _KEY_SETS.setdefault("keys", keys)
        assert keys == reference
    finally:
        algo.stop()


def test_task_assignment_reaches_each_runner(ray_local):
    algo = make_config(runners=2, tasks_per_iteration=4).build_algo()
    try:
        tasks = algo.sample_train_tasks()
        theta = algo._on_learner(lambda learner: learner.begin(len(tasks)))
        samples = algo.sample_episodes(tasks, [theta] * len(tasks), 2)
        assert [s.worker_index for s in samples] == [1, 2, 1, 2]  # round-robin
        for task, sample in zip(tasks, samples):
            assert sample.task == task
            assert sample.episode_task_ids == [[task.task_id]] * len(sample.episodes)
        # Each runner's env now holds the last task it was given.
        current = algo.env_runner_group.foreach_env_runner(
            lambda r: (r.worker_index, r.env.unwrapped.call("get_task")[0].task_id),
            local_env_runner=False)
        assert dict(current) == {1: tasks[2].task_id, 2: tasks[3].task_id}
    finally:
        algo.stop()


def test_adapted_weights_reach_the_runner(ray_local):
    """Round-1 episodes are sampled by exactly the learner's adapted policy φ, not θ."""
    algo = make_config(runners=2, inner_delta=0.05).build_algo()
    try:
        tasks = algo.sample_train_tasks()
        theta = algo._on_learner(lambda learner: learner.begin(len(tasks)))
        round0 = algo.sample_episodes(tasks, [theta] * len(tasks), 2)
        out = algo._on_learner(lambda learner: learner.add_round(0, round0))
        round1 = algo.sample_episodes(tasks, out.weights, 2)
        policy = GaussianMLP(6, 2)
        theta_params = weights_to_params(theta)

        def logp(params, ep):
            with torch.no_grad():
                mean, log_std = forward(policy, params, torch.as_tensor(ep.obs))
                return log_prob(mean, log_std, torch.as_tensor(ep.actions)).numpy()

        for ep in round0[0].episodes:
            np.testing.assert_allclose(ep.logp, logp(theta_params, ep), atol=1e-4)
        for i, sample in enumerate(round1):
            phi = algo._on_learner(lambda learner: learner.adapted_params(i))
            for ep in sample.episodes:
                np.testing.assert_allclose(ep.logp, logp(phi, ep), atol=1e-4)
                assert np.max(np.abs(ep.logp - logp(theta_params, ep))) > 1e-3
    finally:
        algo.stop()


def test_checkpoint_restore_continues_training(ray_local, tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    algo = make_config().build_algo()
    try:
        algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        theta = algo._on_learner(lambda learner: learner.theta_weights())
        next_tasks = algo.sample_train_tasks()
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        assert type(restored).__name__ == "MetaCPO"
        for key, value in restored._on_learner(lambda learner: learner.theta_weights()).items():
            np.testing.assert_array_equal(value, theta[key])
        assert restored.sample_train_tasks() == next_tasks  # the task RNG was restored
        results = restored.train()
        assert results["training_iteration"] == 2
        assert results["metacpo"]["meta_iteration"] == 2
        assert_finite(results["metacpo"])
    finally:
        restored.stop()


def test_adapt_reports_every_step(ray_local):
    algo = make_config(CPOConfig).build_algo()
    try:
        tasks = algo.family.sample_tasks(2, "test", seed=5, cost_limit=5.0)
        report = algo.adapt(tasks, steps=2)
        assert report["steps"] == [0, 1, 2] and len(report["tasks"]) == 2
        for entry, task in zip(report["tasks"], tasks):
            assert entry["task_id"] == task.task_id and entry["cost_limit"] == 5.0
            assert len(entry["return"]) == len(entry["cost"]) == 3
        assert all(math.isfinite(v) for v in report["mean_return"] + report["mean_cost"])
        with pytest.raises(ValueError, match="steps"):
            algo.adapt(tasks, steps=-1)
    finally:
        algo.stop()


def test_training_survives_a_runner_crash(ray_local):
    """An EnvRunner killed mid-sampling is restarted by RLlib; its tasks are re-sent."""
    config = make_config(runners=2, tasks_per_iteration=4, episodes_per_task=6, horizon=60)
    config.fault_tolerance(restart_failed_env_runners=True, env_runner_health_probe_timeout_s=60)
    algo = config.build_algo()
    try:
        algo.train()
        actor = algo.env_runner_group._worker_manager._actors[1]
        killer = threading.Timer(0.5, lambda: ray.kill(actor, no_restart=False))
        killer.start()
        results = algo.train()
        killer.join()
        m = results["metacpo"]
        assert_finite(m)
        assert m["num_tasks_dropped"] == 0
        # The restarted runner is brought back (RLlib's restore_env_runners) and gets
        # tasks again; its task is re-applied by the job itself.
        for _ in range(10):
            results = algo.train()
            if set(results["metacpo"]["per_task"]["runner"]) == {1, 2}:
                break
        assert set(results["metacpo"]["per_task"]["runner"]) == {1, 2}
        assert results["fault_tolerance"]["num_remote_worker_restarts"] >= 1
    finally:
        algo.stop()
