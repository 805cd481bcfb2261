"""MetaCPOConfig and variants: switches, validation (ValueError naming the field), exports, lazy imports."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from ray.rllib.callbacks.callbacks import RLlibCallback

import metacpo_rllib
from metacpo_rllib.rllib import ALGO_CONFIGS, ALGORITHMS, CPO, TRPO, MetaCPO, MetaTRPO
from metacpo_rllib.rllib.config import CPOConfig, MetaCPOConfig, MetaTRPOConfig, TRPOConfig


def test_variants_are_exported_and_set_the_switches():
    expected = {
        "MetaCPOConfig": (MetaCPO, True, True, 1),
        "MetaTRPOConfig": (MetaTRPO, True, False, 1),
        "CPOConfig": (CPO, False, True, 0),
        "TRPOConfig": (TRPO, False, False, 0),
    }
    for name, (algo_class, meta, constrained, k) in expected.items():
        cfg = getattr(metacpo_rllib, name)()
        assert cfg.algo_class is algo_class
        assert (cfg.meta, cfg.constrained, cfg.inner_steps) == (meta, constrained, k)
        upd = cfg.update_config()
        assert (upd.inner_steps, upd.constrained) == (k, constrained)
        assert algo_class.get_default_config().__class__ is type(cfg)
    assert set(ALGO_CONFIGS) == {"meta-cpo", "meta-trpo", "cpo", "trpo"}
    for name in ("MetaCPO", "MetaTRPO", "CPO", "TRPO"):
        assert getattr(metacpo_rllib, name).__name__ == name


def test_every_algorithm_name_comes_from_the_one_table():
    """The CLI choices, the YAML / Tune names, the config classes, the Tune registrations
    and the figure styles are the rows of ``algorithms.ALGORITHM_TABLE``, looked up by
    either name (``test_registered_with_tune`` checks the registry itself)."""
    from metacpo_rllib.algorithms import ALGORITHM_TABLE, algorithm_info
    from metacpo_rllib.cli_support import ALGO_NAMES
    from metacpo_rllib.experiments.plots import _style
    from metacpo_rllib.experiments.spec import ALGORITHM_NAMES, config_class
    from metacpo_rllib.rllib.config import config_class as rllib_config_class

    assert ALGO_NAMES == tuple(a.cli for a in ALGORITHM_TABLE)
    assert ALGORITHM_NAMES == tuple(a.name for a in ALGORITHM_TABLE)
    for info in ALGORITHM_TABLE:
        assert algorithm_info(info.cli) is algorithm_info(info.name) is info
        cfg = ALGO_CONFIGS[info.cli]()
        assert type(cfg) is config_class(info.name) is rllib_config_class(info.cli)
        assert type(cfg).__name__ == info.config_name
        assert cfg.algo_class is getattr(metacpo_rllib, info.name)
        assert ALGORITHMS[info.name] == f"{cfg.algo_class.__module__}:{info.name}"
        assert (cfg.meta, cfg.constrained) == (info.meta, info.constrained)
        assert _style(info.name)["color"] == info.color
    assert len({a.color for a in ALGORITHM_TABLE}) == len(ALGORITHM_TABLE)
    with pytest.raises(KeyError, match="unknown algorithm 'PPO'"):
        algorithm_info("PPO")


def test_training_sets_fields_and_meta_switch_sets_inner_steps():
    cfg = MetaCPOConfig().training(
        inner_steps=2, tasks_per_iteration=3, episodes_per_task=5, train_cost_limit=7.5,
        trust_region_delta=0.02, inner_delta=0.03, metric="euclidean", cg_iters=5,
        line_search_steps=4, line_search_decay=0.5, gamma=0.95, lambda_=0.9,
        cost_gamma=0.99, cost_lambda=0.8, first_order=True, seed=3, cost_upper_bound=False,
        cost_signal_share=False, recover_when_violating=False)
    assert (cfg.inner_steps, cfg.tasks_per_iteration, cfg.episodes_per_task) == (2, 3, 5)
    assert (cfg.train_cost_limit, cfg.seed, cfg.gamma, cfg.first_order) == (7.5, 3, 0.95, True)
    upd = cfg.update_config()
    assert (upd.delta, upd.inner_delta, upd.metric, upd.cg_iters) == (0.02, 0.03, "euclidean", 5)
    assert cfg.batch_kwargs() == {"gamma": 0.95, "lam": 0.9, "cost_gamma": 0.99,
                                  "cost_lam": 0.8, "cost_upper_bound": False}
    assert (upd.cost_signal_share, upd.recover_when_violating) == (False, False)
    defaults = MetaCPOConfig()  # the safety corrections are on unless switched off
    assert (defaults.cost_signal_share, defaults.cost_upper_bound,
            defaults.recover_when_violating) == (True, True, True)
    assert cfg.training(meta=False).inner_steps == 0
    assert cfg.training(meta=True).inner_steps == 1
    assert CPOConfig().training(meta=True, inner_steps=3).inner_steps == 3


BAD_VALUES = [
    ("inner_steps", {"inner_steps": -1}),
    ("inner_steps", {"inner_steps": 0}),            # meta=True needs K >= 1
    ("tasks_per_iteration", {"tasks_per_iteration": 0}),
    ("episodes_per_task", {"episodes_per_task": 1.5}),
    ("train_cost_limit", {"train_cost_limit": -1.0}),
    ("trust_region_delta", {"trust_region_delta": 0.0}),
    ("inner_delta", {"inner_delta": float("nan")}),
    ("metric", {"metric": "kl"}),
    ("backend", {"backend": "cvx"}),
    ("cg_iters", {"cg_iters": 0}),
    ("line_search_decay", {"line_search_decay": 1.0}),
    ("gamma", {"gamma": 1.5}),
    ("lambda_", {"lambda_": -0.1}),
    ("cost_gamma", {"cost_gamma": 0.0}),
    ("first_order", {"first_order": "yes"}),
    ("meta", {"meta": 1}),
    ("seed", {"seed": "x"}),
]


@pytest.mark.parametrize("field,kwargs", BAD_VALUES, ids=[f"{f}-{i}" for i, (f, _) in
                                                         enumerate(BAD_VALUES)])
def test_invalid_training_values_name_the_field(field, kwargs):
    cfg = MetaCPOConfig().environment("PointNav").training(**kwargs)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        cfg.validate()


def test_cost_limit_is_the_deprecated_name_of_train_cost_limit():
    """``training(cost_limit=...)`` still sets the training tasks' limit, with one warning;
    both names in one call is one error naming both."""
    with pytest.warns(FutureWarning, match="^cost_limit is deprecated: use train_cost_limit"
                      ) as caught:
        cfg = MetaCPOConfig().environment("PointNav").training(cost_limit=7.0)
    assert len(caught) == 1
    assert cfg.train_cost_limit == 7.0 and cfg.cost_limit == 7.0
    assert MetaCPOConfig().training(train_cost_limit=6.0).train_cost_limit == 6.0
    assert "cost_limit" not in cfg.to_dict() and cfg.to_dict()["train_cost_limit"] == 7.0
    with pytest.raises(ValueError, match=r"^cost_limit, train_cost_limit: both set"):
        MetaCPOConfig().training(cost_limit=1.0, train_cost_limit=2.0)


def test_cpo_rejects_inner_steps():
    with pytest.raises(ValueError, match=r"^inner_steps:"):
        CPOConfig().environment("PointNav").training(inner_steps=2, meta=False).validate()


def test_invalid_env_and_family_override_are_named():
    with pytest.raises(ValueError, match=r"^env:"):
        MetaCPOConfig().environment("CartPole-v1").validate()
    with pytest.raises(ValueError, match="horizon"):
        MetaCPOConfig().environment("PointNav", env_config={"horizon": 0}).validate()
    with pytest.raises(ValueError, match="no_such_option"):
        MetaCPOConfig().environment("PointNav", env_config={"no_such_option": 1}).validate()
    with pytest.raises(ValueError, match=r"^num_learners:"):
        MetaCPOConfig().environment("PointNav").learners(num_learners=2).validate()


class _EpisodeEndCallback(RLlibCallback):
    def on_episode_end(self, **kwargs) -> None:
        pass


class _TrainResultCallback(RLlibCallback):
    def on_train_result(self, **kwargs) -> None:
        pass


#: RLlib settings the Meta-CPO sampler would ignore: (field named, how the config sets it).
IGNORED_SETTINGS = [
    ("env_to_module_connector", lambda c: c.env_runners(env_to_module_connector=lambda env: [])),
    ("module_to_env_connector", lambda c: c.env_runners(module_to_env_connector=lambda env: [])),
    ("normalize_actions", lambda c: c.environment(normalize_actions=True)),
    ("explore", lambda c: c.env_runners(explore=False)),
    ("batch_mode", lambda c: c.env_runners(batch_mode="truncate_episodes")),
    ("callbacks.on_episode_step", lambda c: c.callbacks(on_episode_step=lambda **kw: None)),
    ("callbacks.on_sample_end", lambda c: c.callbacks(on_sample_end=lambda **kw: None)),
    ("callbacks_class", lambda c: c.callbacks(_EpisodeEndCallback)),
    ("callbacks_class", lambda c: c.callbacks([_TrainResultCallback, _EpisodeEndCallback])),
]


@pytest.mark.parametrize("field,configure", IGNORED_SETTINGS,
                         ids=[f"{f}-{i}" for i, (f, _) in enumerate(IGNORED_SETTINGS)])
def test_sampling_settings_the_sampler_would_ignore_are_rejected(field, configure):
    cfg = configure(MetaCPOConfig().environment("PointNav"))
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}:"):
        cfg.validate()


def test_callbacks_the_sampler_does_not_bypass_are_accepted():
    (MetaCPOConfig().environment("PointNav")
     .callbacks(_TrainResultCallback, on_train_result=lambda **kw: None).validate())


def test_valid_configs_validate():
    for cls in (MetaCPOConfig, MetaTRPOConfig, CPOConfig, TRPOConfig):
        cls().environment("PointNav", env_config={"horizon": 20}).validate()


def test_invalid_config_fails_before_any_worker_starts():
    """build_algo with a bad field raises before Ray (and so any EnvRunner) is started."""
    import ray

    assert not ray.is_initialized()
    cfg = (MetaCPOConfig().environment("PointNav").env_runners(num_env_runners=2)
           .training(tasks_per_iteration=0))
    with pytest.raises(ValueError, match=r"^tasks_per_iteration:"):
        cfg.build_algo()
    assert not ray.is_initialized()


def test_optim_and_envs_do_not_import_ray():
    code = ("import sys, metacpo_rllib, metacpo_rllib.envs, metacpo_rllib.envs.toy, "
            "metacpo_rllib.optim; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_registered_with_tune():
    """Importing the package registers the four algorithms and every family with Tune.

    Run in a fresh process: without a running Ray, Tune keeps registrations in a
    per-process buffer that a previous ray.init/shutdown in this process has emptied
    (that case is test_names_survive_a_ray_restart's)."""
    code = """
from ray.tune.registry import ENV_CREATOR, TRAINABLE_CLASS, _global_registry
from metacpo_rllib import CPO, TRPO, MetaCPO, MetaTRPO
from metacpo_rllib.envs import FAMILIES
for name, cls in (("MetaCPO", MetaCPO), ("MetaTRPO", MetaTRPO), ("CPO", CPO), ("TRPO", TRPO)):
    assert _global_registry.get(TRAINABLE_CLASS, name) is cls, name
for family in FAMILIES:
    assert _global_registry.contains(ENV_CREATOR, family), family
env = _global_registry.get(ENV_CREATOR, "PointNav")({"horizon": 7, "num_envs": 1})
assert env.horizon == 7
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_names_survive_a_ray_restart():
    """Tune's registry lives in the cluster's KV store; a second local Ray instance in
    the same process still knows the family envs and the algorithm names."""
    import shutil
    import tempfile

    import ray
    from ray.tune.registry import ENV_CREATOR, TRAINABLE_CLASS, _global_registry

    for _ in range(2):
        temp_dir = tempfile.mkdtemp(prefix="mcpo-reg-", dir="/tmp")
        ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=temp_dir,
                 log_to_driver=False, configure_logging=False)
        try:
            assert _global_registry.contains(ENV_CREATOR, "PointNav")
            assert _global_registry.contains(TRAINABLE_CLASS, "MetaCPO")
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
