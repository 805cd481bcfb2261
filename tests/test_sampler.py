"""The lean runner-side sampler (``rllib.episodes``) on real envs and a real (local, Ray-free)
SingleAgentEnvRunner: seeding, completeness, costs, log-probs, clipping, metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from metacpo_rllib.envs import make_family
from metacpo_rllib.envs.base import Task
from metacpo_rllib.optim import params_of
from metacpo_rllib.optim.policy import forward, log_prob
from metacpo_rllib.rllib.config import MetaCPOConfig
from metacpo_rllib.rllib.episodes import episode_streams, numpy_policy, sample_jobs, \
    torch_policy
from metacpo_rllib.rllib.module import params_to_weights
from metacpo_rllib.rllib.protocol import SampleJob

HORIZON = 9
FAMILY = "PointNav"


def _runner(num_envs: int, family: str = FAMILY, env_config: dict | None = None
            ) -> SingleAgentEnvRunner:
    config = (MetaCPOConfig()
              .environment(family, env_config=env_config or {"horizon": HORIZON})
              .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs))
    config.validate()
    return SingleAgentEnvRunner(config=config, worker_index=0)


@pytest.fixture(scope="module")
def runners() -> dict[int, SingleAgentEnvRunner]:
    out = {n: _runner(n) for n in (1, 2, 3)}
    yield out
    for runner in out.values():
        runner.stop()


@pytest.fixture(scope="module")
def task() -> Task:
    return make_family(FAMILY, horizon=HORIZON).sample_tasks(1, seed=11)[0]


def _weights(seed: int, log_std: float = -0.5) -> dict:
    """RLModule weights of a random (32, 16) policy for PointNav (6 obs, 2 actions)."""
    from metacpo_rllib.optim import GaussianMLP

    torch.manual_seed(seed)
    pi = GaussianMLP(6, 2, init_log_std=log_std)
    with torch.no_grad():
        pi.mean.weight.normal_(0.0, 0.5)
    return params_to_weights(params_of(pi))


def _job(task: Task, n: int, seed, weights=None, job: int = 0) -> SampleJob:
    return SampleJob.learning(job, task, weights, n, seed)


def _sample(runner, task, n, seed, weights=None):
    return sample_jobs(runner, [_job(task, n, seed, weights)])["results"][0]


def _assert_same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("obs", "actions", "logp", "rewards", "costs"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key))


def test_same_seed_same_episodes_other_seed_other_episodes(runners, task):
    runner, weights = runners[2], _weights(0)
    a = _sample(runner, task, 3, seed=123, weights=weights).episodes
    b = _sample(runner, task, 3, seed=123, weights=weights).episodes
    c = _sample(runner, task, 3, seed=124, weights=weights).episodes
    _assert_same(a, b)
    assert not np.array_equal(a[0].actions, c[0].actions)
    assert not np.array_equal(a[0].obs[0], c[0].obs[0])  # reset seeds differ too


def test_seeded_job_leaves_the_global_rngs_alone(runners, task):
    weights = _weights(1)
    torch.manual_seed(7)
    np.random.seed(7)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    _sample(runners[1], task, 2, seed=5, weights=weights)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) \
        and after[2:] == np_state[2:]


@pytest.mark.parametrize("num_envs", [1, 2, 3])
def test_episode_count_and_spread_over_sub_envs(runners, task, num_envs):
    """5 episodes (not a multiple of 2 or 3) on 1, 2 and 3 sub-envs: all complete, and
    the same episodes whatever the number of sub-envs."""
    out = _sample(runners[num_envs], task, 5, seed=99, weights=_weights(2))
    assert len(out.episodes) == 5 and out.num_env_steps == 5 * HORIZON
    assert all(len(ep) == HORIZON for ep in out.episodes)
    assert out.episode_task_ids == [[task.task_id]] * 5
    assert out.task == task and out.worker_index == 0
    reference = _sample(runners[1], task, 5, seed=99, weights=_weights(2)).episodes
    for x, y in zip(out.episodes, reference):
        for key in ("obs", "actions", "logp", "rewards", "costs"):
            np.testing.assert_allclose(getattr(x, key), getattr(y, key), rtol=1e-5, atol=1e-6)


def test_replaying_the_clipped_actions_reproduces_obs_rewards_and_costs(runners, task):
    """Stored actions are the unclipped Gaussian samples; the env saw them clipped. A
    fresh env reset with the episode's reset seed and fed the clipped actions gives the
    stored obs, rewards and per-step ``info["cost"]``."""
    seed, n = 31, 3
    out = _sample(runners[2], task, n, seed=seed, weights=_weights(3, log_std=0.5))
    actions = np.concatenate([ep.actions for ep in out.episodes])
    assert np.abs(actions).max() > 1.0  # some actions lie outside the box: kept unclipped
    env = make_family(FAMILY, horizon=HORIZON).make_env(task)
    for (reset_seed, _), ep in zip(episode_streams(n, seed), out.episodes):
        obs, _ = env.reset(seed=reset_seed)
        costs, rewards, done = [], [], False
        for t, action in enumerate(ep.actions):
            assert not done
            np.testing.assert_array_equal(ep.obs[t], np.asarray(obs, np.float32))
            obs, reward, terminated, truncated, info = env.step(np.clip(action, -1.0, 1.0))
            rewards.append(reward)
            costs.append(info["cost"])
            done = terminated or truncated
        assert done  # the episode is complete
        np.testing.assert_array_equal(ep.rewards, rewards)
        np.testing.assert_array_equal(ep.costs, costs)
    assert sum(ep.costs.sum() for ep in out.episodes) >= 0.0


def test_logp_is_optim_log_prob_of_the_stored_actions(runners, task):
    runner = runners[3]
    out = _sample(runner, task, 4, seed=8, weights=_weights(4, log_std=-0.2))
    pi = runner.module.pi
    for ep in out.episodes:
        with torch.no_grad():
            mean, log_std = forward(pi, params_of(pi), torch.as_tensor(ep.obs))
            expected = log_prob(mean, log_std, torch.as_tensor(ep.actions)).numpy()
        np.testing.assert_allclose(ep.logp, expected, rtol=1e-5, atol=1e-5)


def test_numpy_policy_matches_the_torch_module(runners):
    pi = runners[1].module.pi
    obs = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    mean_np, log_std_np = numpy_policy(pi)(obs)
    mean_t, log_std_t = torch_policy(pi)(obs)
    assert mean_np.dtype == np.float32
    np.testing.assert_allclose(mean_np, mean_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_std_np, log_std_t)


def test_ray_free_sampler_gives_the_runners_episodes(runners, task):
    """``rollout.sample_episodes`` on a plain env with a policy at given parameters (what
    tests and research scripts use) samples exactly what an EnvRunner's job samples."""
    from metacpo_rllib.optim import GaussianMLP
    from metacpo_rllib.rllib.module import weights_to_params
    from metacpo_rllib.rollout import sample_episodes, sampling_policy

    weights = _weights(6, log_std=0.3)
    expected = _sample(runners[1], task, 3, seed=17, weights=weights).episodes
    env = make_family(FAMILY, horizon=HORIZON).make_env(task)
    params = {k: v.float() for k, v in weights_to_params(weights).items()}
    episodes = sample_episodes(env, sampling_policy(GaussianMLP(6, 2), params), 3, seed=17)
    _assert_same(episodes, expected)


def test_steps_and_episodes_reach_the_runner_metrics(task):
    runner = _runner(2)
    try:
        out = sample_jobs(runner, [_job(task, 3, 1, _weights(5), job=0),
                                   _job(task, 2, 2, None, job=1)])
        metrics = out["metrics"]
        assert [r.job for r in out["results"]] == [0, 1]
        assert metrics["num_env_steps_sampled_lifetime"] == 5 * HORIZON
        assert metrics["num_episodes_lifetime"] == 5
        assert metrics["episode_len_mean"] == HORIZON
        returns = [float(ep.rewards.sum()) for r in out["results"] for ep in r.episodes]
        assert float(metrics["episode_return_mean"]) == pytest.approx(np.mean(returns))
    finally:
        runner.stop()


def test_float64_obs_of_a_safety_env_are_stored_as_float32():
    runner = _runner(2, "PointCircle", {"max_episode_steps": 6})
    try:
        family = make_family("PointCircle", max_episode_steps=6)
        out = _sample(runner, family.default_task(), 3, seed=4)
        assert [len(ep) for ep in out.episodes] == [6, 6, 6]
        assert all(ep.obs.dtype == np.float32 and ep.actions.dtype == np.float32
                   and ep.logp.dtype == np.float32 and ep.costs.dtype == np.float64
                   for ep in out.episodes)
    finally:
        runner.stop()
