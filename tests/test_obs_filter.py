"""The running observation filter: its statistics, the policy forward (torch and numpy), and its
journey through a real algorithm (Learner, EnvRunners, checkpoints, exported policy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metacpo_rllib.optim.obs_filter import OBS_CLIP, ObsFilter
from metacpo_rllib.optim.policy import GaussianMLP
from metacpo_rllib.optim import meta_update, params_of
from metacpo_rllib.policy import load_policy, policy_from_weights
from metacpo_rllib.rllib import CPOConfig, MetaCPOConfig
from metacpo_rllib.rllib.module import params_to_weights
from metacpo_rllib.rllib.protocol import SampleResult
from metacpo_rllib.rollout import numpy_policy, sample_episodes, sampling_policy


def test_statistics_match_all_observations_seen() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 5.0, size=(n, 4)) for n in (7, 1, 30)]
    chunks[0][:, 2] = 9.81  # a constant channel stays finite
    f = ObsFilter(4)
    for chunk in chunks:
        f.update(chunk)
    seen = np.concatenate(chunks)
    np.testing.assert_allclose(f.mean.numpy(), seen.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f.var.numpy(), seen.var(0), rtol=1e-5, atol=1e-6)
    assert float(f.count) == len(seen)
    out = f(torch.as_tensor(seen, dtype=torch.float32)).numpy()
    assert np.all(np.isfinite(out)) and np.abs(out).max() <= OBS_CLIP
    z = (seen - seen.mean(0)) / np.sqrt(seen.var(0) + 1e-8)
    np.testing.assert_allclose(out, np.clip(z, -OBS_CLIP, OBS_CLIP), atol=1e-4)


def test_filter_starts_as_identity_and_numpy_copy_agrees() -> None:
    torch.manual_seed(0)
    plain, filtered = GaussianMLP(5, 2), GaussianMLP(5, 2, obs_filter=True)
    filtered.load_state_dict(plain.state_dict(), strict=False)
    obs = (torch.rand(16, 5) - 0.5) * 16  # inside the clip range
    torch.testing.assert_close(filtered(obs)[0], plain(obs)[0], rtol=0, atol=0)
    assert not any(k.startswith("obs_filter") for k in plain.state_dict())
    assert list(params_of(filtered)) == list(params_of(plain))  # buffers are not parameters

    filtered.obs_filter.update(np.random.default_rng(1).normal(2.0, 3.0, size=(50, 5)))
    moved = filtered(obs)[0]
    assert not torch.allclose(moved, plain(obs)[0])
    mean_np, _ = numpy_policy(filtered)(obs.numpy())
    np.testing.assert_allclose(mean_np, moved.detach().numpy(), rtol=1e-5, atol=1e-6)

    # The weights carry the statistics; a policy rebuilt from them normalises alike.
    weights = params_to_weights(params_of(filtered), filtered)
    assert "pi.obs_filter.mean" in weights and "pi.obs_filter.count" in weights
    rebuilt = policy_from_weights(weights)
    np.testing.assert_allclose(rebuilt.distribution(obs.numpy())[0], moved.detach().numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("field, value", [("normalize_observations", "yes")])
def test_bad_switch_is_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        MetaCPOConfig().environment("PointNav").training(**{field: value}).validate()


def test_rllib_observation_filter_is_refused() -> None:
    config = MetaCPOConfig().environment("PointNav").env_runners(
        observation_filter="MeanStdFilter")
    with pytest.raises(ValueError, match="observation_filter.*normalize_observations"):
        config.validate()


def test_train_flag() -> None:
    from metacpo_rllib import cli

    parser = cli.build_parser()
    base = ["train", "--family", "PointNav"]
    assert cli.build_config(parser.parse_args(base)).normalize_observations is False
    config = cli.build_config(parser.parse_args(base + ["--normalize-observations"]))
    assert config.normalize_observations is True
    assert config.get_rl_module_spec().model_config["obs_filter"] is True


def _learner_filter(algo) -> ObsFilter:
    return algo.learner_group._learner.policy.obs_filter


@pytest.mark.ray
def test_filter_in_learner_runners_checkpoint_and_policy(ray_local, tmp_path) -> None:
    config = (MetaCPOConfig().environment("PointNav", env_config={"horizon": 20})
              .env_runners(num_env_runners=1)
              .training(tasks_per_iteration=2, episodes_per_task=2, seed=0,
                        normalize_observations=True))
    algo = config.build_algo()
    try:
        assert float(_learner_filter(algo).count) == 0.0
        algo.train()
        learner = _learner_filter(algo)
        # every step of the iteration (2 rounds x 2 tasks x 2 episodes x 20 steps) merged once
        assert float(learner.count) == 2 * 2 * 2 * 20
        assert torch.all(learner.scale != 1.0)
        # The runners' policies normalise exactly as the Learner's.
        runner_stats = algo.env_runner_group.foreach_env_runner(
            lambda r: (r.module.pi.obs_filter.mean.numpy().copy(),
                       r.module.pi.obs_filter.scale.numpy().copy(),
                       float(r.module.pi.obs_filter.count)), local_env_runner=False)
        assert len(runner_stats) == 1
        for shift, scale, count in runner_stats:
            assert count == float(learner.count)
            np.testing.assert_array_equal(shift, learner.mean.numpy())
            np.testing.assert_array_equal(scale, learner.scale.numpy())

        before = learner.mean.clone()
        family = config.make_family()
        algo.adapt(family.sample_tasks(2, "test", seed=3), 1, eval_episodes=2, eval_seed=0)
        torch.testing.assert_close(_learner_filter(algo).mean, before, rtol=0, atol=0)

        path = algo.save_to_path(str(tmp_path / "ckpt"))
        policy = load_policy(path)
        obs = np.random.default_rng(2).normal(0, 3, size=(8, policy.obs_dim)).astype(np.float32)
        with torch.no_grad():
            expected = algo.learner_group._learner.policy(torch.from_numpy(obs))[0].numpy()
        np.testing.assert_allclose(policy.distribution(obs)[0], expected, rtol=1e-6, atol=1e-7)
    finally:
        algo.stop()

    from ray.rllib.algorithms.algorithm import Algorithm

    again = Algorithm.from_checkpoint(path)
    try:
        torch.testing.assert_close(_learner_filter(again).mean, before, rtol=0, atol=0)
        assert float(_learner_filter(again).count) == 2 * 2 * 2 * 20
    finally:
        again.stop()


@pytest.mark.ray
def test_the_update_uses_the_filter_its_batch_was_sampled_with(ray_local) -> None:
    """θ's update is computed with the filter the batch was sampled with; the filter takes
    in the iteration's observations only afterwards."""
    config = (CPOConfig().environment("PointNav", env_config={"horizon": 20})
              .training(tasks_per_iteration=1, episodes_per_task=3, seed=0,
                        normalize_observations=True, critics=True))
    algo = config.build_algo()
    task = algo.family.sample_tasks(1, "train", seed=0)[0]

    def step(learner):
        pi = learner.policy
        pi.obs_filter.update(np.random.default_rng(4).normal(1.0, 2.0, size=(40, 6)))
        count = int(pi.obs_filter.count)
        env = algo.family.make_env(task)
        episodes = sample_episodes(env, sampling_policy(pi), 3, seed=1)
        learner.begin(1)
        learner.add_round(0, [SampleResult(job=0, task=task, episodes=episodes)])
        expected, _ = meta_update(pi, params_of(pi), [[]], [learner._query[0]],
                                  learner.config.update_config())
        stats = learner.meta_step()
        got = {k: v.detach().clone() for k, v in params_of(pi).items()}
        return expected, got, count, int(pi.obs_filter.count), stats

    try:
        expected, got, before, after, stats = algo._on_learner(step)
    finally:
        algo.stop()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value.detach(), rtol=0, atol=0)
    assert after == before + 3 * 20
    assert stats["updates_skipped"] == 0.0 and "critic_loss_cost" in stats


def test_compute_values_sees_the_filtered_observations() -> None:
    """RLlib's ValueFunctionAPI entry point feeds the critic what the Learner feeds it."""
    import gymnasium as gym
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from metacpo_rllib.optim.critics import DEFAULT_MAX_LEN, critic_features
    from metacpo_rllib.rllib.module import CRITIC_TIME

    config = MetaCPOConfig().environment("PointNav").training(
        critics=True, normalize_observations=True, critic_hidden=[8])
    spec = config.get_rl_module_spec()
    module = RLModuleSpec(module_class=spec.module_class,
                          observation_space=gym.spaces.Box(-9.0, 9.0, (5,), np.float32),
                          action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                          model_config=spec.model_config, inference_only=False).build()
    module.pi.obs_filter.update(np.random.default_rng(5).normal(3.0, 4.0, size=(64, 5)))
    obs = torch.as_tensor(np.random.default_rng(6).normal(3.0, 4.0, size=(9, 5)),
                          dtype=torch.float32)
    with torch.no_grad():
        # critic_features numbers the rows as one episode's steps: t / 1000
        values = module.compute_values({Columns.OBS: obs,
                                        CRITIC_TIME: torch.arange(9) / DEFAULT_MAX_LEN})
        expected = module.vf_reward(critic_features(module.pi.obs_filter(obs)))
        raw = module.vf_reward(critic_features(obs))
    torch.testing.assert_close(values, expected)
    assert not torch.allclose(values, raw)
