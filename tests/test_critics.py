"""Learned reward and cost critics: the fit, GAE with their values, the RLModule's value
heads and a real Meta-CPO run with them (toy PointNav CMDP)."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from metacpo_rllib.optim import EpisodeData, make_batch
from metacpo_rllib.optim.advantages import (
    LinearFeatureBaseline,
    baseline_features,
    discounted_cumsum,
    gae,
)
from metacpo_rllib.optim.critics import (
    ValueMLP,
    critic_features,
    fit_critic,
    privileged_vector,
)
from metacpo_rllib.rllib import MetaCPOConfig
from metacpo_rllib.rllib.module import CRITIC_PRIVILEGED, CRITIC_TIME, GaussianMLPModule
from metacpo_rllib.rllib.protocol import SampleResult
from helpers import random_episodes, theta


def episode(t: int, seed: int) -> EpisodeData:
    rng = np.random.default_rng(seed)
    return EpisodeData(obs=rng.normal(size=(t, 3)).astype(np.float32),
                       actions=rng.normal(size=(t, 2)).astype(np.float32),
                       logp=rng.normal(size=t).astype(np.float32),
                       rewards=rng.normal(size=t).astype(np.float32),
                       costs=rng.uniform(0, 2, size=t).astype(np.float32))


# -- (a) the fit ----------------------------------------------------------------------------
def test_fit_critic_learns_a_regression_and_is_reproducible():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 3, generator=gen)
    y = 40.0 * torch.sin(x[:, 0]) + 15.0 * x[:, 1] + 30.0  # targets far from unit scale

    def fitted(epochs: int) -> tuple[ValueMLP, float]:
        torch.manual_seed(1)
        net = ValueMLP(3, (32, 32))
        return net, fit_critic(net, x, y, epochs=epochs, lr=3e-3, minibatch=64)

    threads = torch.get_num_threads()
    net1, loss1 = fitted(1)
    net, loss = fitted(40)
    assert torch.get_num_threads() == threads  # the fit's one thread is not left behind
    assert loss < 0.2 * loss1
    assert float(net.scale) == pytest.approx(float(y.pow(2).mean().sqrt()), rel=1e-4)
    with torch.no_grad():
        rmse = float((net(x) - y).pow(2).mean().sqrt())
    assert rmse < 0.15 * float(y.std())
    # the same seed and data give the same weights (the minibatch order is seeded)
    again, loss_again = fitted(40)
    assert loss_again == loss
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_rescaling_keeps_the_critics_values():
    torch.manual_seed(0)
    net = ValueMLP(2, (8,))
    x = torch.randn(50, 2)
    before = net(x).detach()
    net.update_scale(torch.full((50,), 80.0))
    assert float(net.scale) == pytest.approx(80.0)
    torch.testing.assert_close(net(x).detach(), before)
    net.update_scale(torch.zeros(50))  # a running scale, not reset by a cost-free batch
    assert 0.0 < float(net.scale) < 80.0


def test_features_and_privileged_vector():
    obs = np.arange(12, dtype=np.float32).reshape(4, 3)
    f = critic_features(obs, privileged=np.array([7.0, 8.0]), max_len=100)
    assert f.shape == (4, 6) and f.dtype == torch.float32
    torch.testing.assert_close(f[:, 3], torch.tensor([0.0, 0.01, 0.02, 0.03]))
    assert torch.equal(f[:, 4:], torch.tensor([[7.0, 8.0]] * 4))
    assert critic_features(obs).shape == (4, 4)
    vec = privileged_vector({"b": [1, 2], "a": 0.5, "name": "x"}, cost_limit=5.0)
    np.testing.assert_array_equal(vec, np.array([0.5, 1.0, 2.0, 5.0], dtype=np.float32))


# -- (b) GAE with the critics' values -------------------------------------------------------
def test_make_batch_uses_given_values_and_keeps_the_baseline_otherwise():
    eps = [episode(6, 0), episode(9, 1)]
    kwargs = dict(gamma=0.9, lam=0.8, cost_gamma=1.0, cost_lam=0.95)
    rng = np.random.default_rng(3)
    v_r = [rng.normal(size=len(e)) for e in eps]
    v_c = [rng.uniform(0, 5, size=len(e)) for e in eps]
    with_values = make_batch(eps, values=(v_r, v_c), **kwargs)
    adv_c = np.concatenate([gae(v, e.costs.astype(np.float64), 1.0, 0.95)
                            for v, e in zip(v_c, eps)])
    np.testing.assert_allclose(with_values.adv_cost.numpy(), adv_c, rtol=1e-5, atol=1e-5)
    adv_r = np.concatenate([gae(v, e.rewards.astype(np.float64), 0.9, 0.8)
                            for v, e in zip(v_r, eps)])
    adv_r = (adv_r - adv_r.mean()) / (adv_r.std() + 1e-8)
    np.testing.assert_allclose(with_values.adv_reward.numpy(), adv_r, rtol=1e-5, atol=1e-5)

    # without values: the linear feature baseline fitted on this batch, as before
    plain = make_batch(eps, **kwargs)
    feats = [baseline_features(e.obs) for e in eps]
    costs = [e.costs.astype(np.float64) for e in eps]
    baseline = LinearFeatureBaseline()
    baseline.fit(feats, [discounted_cumsum(c, 1.0) for c in costs])
    old = np.concatenate([gae(baseline.predict(f), c, 1.0, 0.95) for f, c in zip(feats, costs)])
    assert torch.equal(plain.adv_cost, torch.as_tensor(old, dtype=torch.float32))
    assert not torch.allclose(plain.adv_cost, with_values.adv_cost)
    with pytest.raises(ValueError, match="values: episode 1 has 9 steps"):
        make_batch(eps, values=(v_r, [v_c[0], v_c[1][:4]]), **kwargs)


# -- (c) the RLModule's value heads ---------------------------------------------------------
def build_module(inference_only: bool, privileged: bool = False) -> GaussianMLPModule:
    config = MetaCPOConfig().environment("PointNav").training(
        critics=True, critic_privileged=privileged, critic_hidden=[16, 8])
    spec = config.get_rl_module_spec()
    obs_space = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    return RLModuleSpec(module_class=spec.module_class, observation_space=obs_space,
                        action_space=act_space, model_config=spec.model_config,
                        inference_only=inference_only).build()


def test_value_heads_only_on_the_learner_module():
    sampler = build_module(inference_only=True)
    assert not any(k.startswith(("vf_reward.", "vf_cost.")) for k in sampler.state_dict())
    learner = build_module(inference_only=False)
    keys = set(learner.state_dict())
    assert {"vf_reward.out.weight", "vf_cost.out.weight", "vf_reward.scale"} <= keys
    # the weights the EnvRunners get are the policy's only, and load into their module
    sent = learner.get_state(inference_only=True)
    assert sent and all(k.startswith("pi.") for k in sent)
    sampler.set_state(sent)
    obs = torch.randn(7, 5)
    values = learner.compute_values({Columns.OBS: obs})
    assert values.shape == (7,)
    later = learner.compute_values({Columns.OBS: obs, CRITIC_TIME: torch.full((7,), 0.5)})
    assert not torch.allclose(values, later)
    with pytest.raises(ValueError, match="critics"):
        sampler.compute_values({Columns.OBS: obs})


def test_privileged_inputs_size_the_critics():
    learner = build_module(inference_only=False, privileged=True)
    # PointNav: five layout parameters + the cost limit; obs 5 + time 1 + 6
    assert learner.privileged_dim == 6
    assert learner.vf_cost.in_dim == 12
    obs = torch.randn(3, 5)
    without = learner.compute_values({Columns.OBS: obs})
    given = learner.compute_values({Columns.OBS: obs, CRITIC_PRIVILEGED: torch.ones(6)})
    assert given.shape == (3,) and not torch.allclose(without, given)


# -- (d) a real run -------------------------------------------------------------------------
def critic_weights(algo) -> dict[str, np.ndarray]:
    return algo._on_learner(lambda learner: {
        k: v.detach().numpy().copy()
        for k, v in learner.module[DEFAULT_MODULE_ID].unwrapped().state_dict().items()
        if k.startswith(("vf_reward.", "vf_cost."))})


def gae_inputs(algo, privileged: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reward advantages the Learner builds for one task's episodes, those of GAE on
    the reward critic's values computed here, and those of the linear baseline."""
    task = algo.family.sample_tasks(1, "train", seed=9)[0]
    sample = SampleResult(job=0, task=task, episodes=random_episodes(algo.family, task, 2, 0))
    vec = privileged_vector(task.params, task.cost_limit) if privileged else None

    def build(learner):
        module = learner.module[DEFAULT_MODULE_ID].unwrapped()
        with torch.no_grad():
            values = [[net(critic_features(ep.obs, vec)).double().numpy()
                       for ep in sample.episodes] for net in (module.vf_reward, module.vf_cost)]
        kwargs = dict(task_id=task.task_id, cost_limit=task.cost_limit,
                      **learner.config.batch_kwargs())
        learner.begin(1)
        batch = learner._batch(0, sample)
        learner.begin(0)
        return (batch.adv_reward,
                make_batch(sample.episodes, values=tuple(values), **kwargs).adv_reward,
                make_batch(sample.episodes, **kwargs).adv_reward)

    return algo._on_learner(build)


@pytest.mark.ray
@pytest.mark.parametrize("privileged", [False, True])
def test_training_fits_the_critics(ray_local, tmp_path, privileged):
    from ray.rllib.algorithms.algorithm import Algorithm

    config = (MetaCPOConfig().environment("PointNav", env_config={"horizon": 30})
              .env_runners(num_env_runners=0)
              .training(tasks_per_iteration=2, episodes_per_task=3, seed=0, critics=True,
                        critic_privileged=privileged, critic_epochs=3))
    algo = config.build_algo()
    try:
        runner_module = algo.env_runner_group.local_env_runner.module
        assert not any(k.startswith("vf_") for k in runner_module.state_dict())
        start, theta0 = critic_weights(algo), theta(algo)
        results = algo.train()
        update = results["metacpo"]["update"]
        for key in ("critic_loss_reward", "critic_loss_cost"):
            assert math.isfinite(update[key]) and update[key] >= 0.0
        fitted = critic_weights(algo)
        assert set(fitted) == set(start)
        assert any(not np.array_equal(fitted[k], start[k]) for k in start)
        assert fitted["vf_cost.scale"] > 1.0  # PointNav costs are episode-cost units
        results = algo.train()
        assert math.isfinite(results["metacpo"]["update"]["critic_loss_cost"])
        theta2 = theta(algo)
        assert any(not np.allclose(theta2[k], theta0[k]) for k in theta0)
        second = critic_weights(algo)
        used, expected, linear = gae_inputs(algo, privileged)
        torch.testing.assert_close(used, expected)
        assert not torch.allclose(used, linear, atol=1e-3)
        # test-time adaptation uses the critics frozen
        report = algo.adapt(algo.family.sample_tasks(1, "test", seed=3), steps=1,
                            eval_episodes=0)
        assert math.isfinite(report["mean_cost"][1])
        for key, value in critic_weights(algo).items():
            np.testing.assert_array_equal(value, second[key])
        state = algo.get_state()
        module_state = state["learner_group"]["learner"]["rl_module"][DEFAULT_MODULE_ID]
        np.testing.assert_array_equal(module_state["vf_reward.out.weight"],
                                      second["vf_reward.out.weight"])
        path = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        for key, value in critic_weights(restored).items():
            np.testing.assert_array_equal(value, second[key])
    finally:
        restored.stop()


# -- (e) bad values -------------------------------------------------------------------------
@pytest.mark.parametrize("fields, name", [
    ({"critics": 1}, "critics"),
    ({"critics": True, "critic_privileged": "yes"}, "critic_privileged"),
    ({"critic_privileged": True}, "critic_privileged"),
    ({"critics": True, "critic_epochs": 0}, "critic_epochs"),
    ({"critics": True, "critic_epochs": 2.0}, "critic_epochs"),
    ({"critics": True, "critic_lr": 0.0}, "critic_lr"),
    ({"critics": True, "critic_lr": float("nan")}, "critic_lr"),
    ({"critics": True, "critic_hidden": []}, "critic_hidden"),
    ({"critics": True, "critic_hidden": [64, 0]}, "critic_hidden"),
    ({"critics": True, "critic_hidden": 64}, "critic_hidden"),
])
def test_bad_critic_fields_name_the_field(fields, name):
    config = MetaCPOConfig().environment("PointNav").training(**fields)
    with pytest.raises(ValueError, match=f"^{name}: "):
        config.validate_metacpo()


SPEC = """\
name: t
algorithm: [MetaCPO, CPO]
family: PointNav
iterations: 2
training:
  critics: true
  critic_hidden: [32, 32]
  critic_epochs: EPOCHS
grid:
  critic_privileged: [false, true]
"""


def test_critic_fields_are_sweep_fields_and_off_by_default():
    import yaml

    from metacpo_rllib.experiments.spec import SpecError, build_config, parse_spec

    spec = parse_spec(yaml.safe_load(SPEC.replace("EPOCHS", "5")))
    config = build_config(spec, "CPO", {"critic_privileged": True})
    assert (config.critics, config.critic_privileged, config.critic_epochs) == (True, True, 5)
    assert config.get_rl_module_spec().model_config["critic_hidden"] == [32, 32]
    with pytest.raises(SpecError, match="^training.critic_epochs: "):
        parse_spec(yaml.safe_load(SPEC.replace("EPOCHS", "0")))
    config = MetaCPOConfig()
    assert config.critics is False and config.critic_privileged is False
    assert "critics" not in config.environment("PointNav").get_rl_module_spec().model_config


def test_train_critics_flag(capsys):
    from metacpo_rllib import cli

    parser = cli.build_parser()
    base = ["train", "--family", "PointNav"]
    config = cli.build_config(parser.parse_args(base))
    assert (config.critics, config.critic_privileged) == (False, False)
    config = cli.build_config(parser.parse_args(base + ["--critics", "on"]))
    assert (config.critics, config.critic_privileged) == (True, False)
    config = cli.build_config(parser.parse_args(base + ["--critics", "privileged"]))
    assert (config.critics, config.critic_privileged) == (True, True)
    config.validate_metacpo()
    assert cli.main(base + ["--critics", "yes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metacpo train: error: argument --critics")
