"""Reliability: every training field of all four configs rejects invalid values with one
ValueError naming the field, before Ray (and so any EnvRunner) starts."""
from __future__ import annotations

import math

import pytest

from metacpo_rllib.experiments.spec import setter_fields
from metacpo_rllib.rllib.config import CPOConfig, MetaCPOConfig, MetaTRPOConfig, TRPOConfig

CONFIGS = {"MetaCPO": MetaCPOConfig, "MetaTRPO": MetaTRPOConfig, "CPO": CPOConfig,
           "TRPO": TRPOConfig}

#: field -> invalid values (each must be rejected by every variant).
INVALID: dict[str, list] = {
    "inner_steps": [-1, 1.5, True, "2"],
    "tasks_per_iteration": [0, -3, 2.0, None, True],
    "episodes_per_task": [0, 1.5, "4", False],
    "train_cost_limit": [-1.0, math.nan, math.inf, "10"],
    "trust_region_delta": [0.0, -0.1, math.nan, math.inf, "0.01", None],
    "inner_delta": [0.0, -1e-3, math.nan, math.inf, None],
    "metric": ["kl", None, 1],
    "backend": ["cvx", None, 0],
    "cg_iters": [0, -1, 2.5, True],
    "cg_damping": [-0.1, math.nan, math.inf, "0.1", None],
    "fisher_stride": [0, -2, 1.5, True, None],
    "line_search_steps": [0, -2, 1.5, False],
    "line_search_decay": [0.0, 1.0, 1.5, -0.5, math.nan, None],
    "gamma": [0.0, 1.5, -0.1, math.nan, None],
    "lambda_": [-0.1, 1.01, math.nan, None],
    "cost_gamma": [0.0, 2.0, math.nan, None],
    "cost_lambda": [-0.5, 1.5, math.inf, None],
    "first_order": ["yes", 1, None],
    "cost_signal_share": ["yes", 1, None],
    "cost_signal_share_scope": ["always", "", None, True],
    "cost_upper_bound": ["yes", 0],
    "recover_when_violating": [1.0, None],
    "inner_cost_free_scale": [0.0, 1.5, math.nan, True, "0.5"],
    "inner_recovery_scale": [0.5, math.inf, math.nan, True, "2"],
    "theta_cost_constraint": [1, "yes", None],
    "outer_recovery_scale": [0.5, math.inf, math.nan, True, "2", None],
    "train_cost_window": [-1, 2.5, True, None, "8"],
    "train_limit_margin": [-0.1, 1.0, math.nan, True, None, "0.5"],
    "trust_region_schedule": [[], [[0]], [[0, 0.01], [0, 0.02]], [[3, 0.01], [1, 0.02]],
                              [[-1, 0.01]], [[0, 0.0]], [[0, math.inf]], [[0.5, 0.01]],
                              [[True, 0.01]], "0.01", 0.01],
    "curriculum_iterations": [-1, 1.5, True, None, "2", 3],  # 3: needs curriculum_ranges
    "curriculum_ranges": [{}, {"train": {"radius": [1, 2]}}, "x", 5],  # PointNav: no ranges
    "adaptation_episodes_per_task": [0, -1, 2.5, True, "16"],
    "adaptation_first_episodes_per_task": [0, -1, 2.5, True, "16"],
    "adaptation_delta": [0.0, -0.01, math.nan, math.inf, "0.01", True],
    "adaptation_cost_window": [-1, 2.5, True, None, "8"],
    "adaptation_cost_free_scale": [0.0, 1.5, -0.5, math.nan, None, "0.5", True],
    "adaptation_recovery_scale": [0.5, 0.0, math.inf, math.nan, None, "2", True],
    "adaptation_cost_margin_rate": [-0.1, math.inf, math.nan, None, "0.5", True],
    "adaptation_cost_room": [-0.1, math.inf, math.nan, None, "0.5", True],
    "adaptation_limit_margin": [-0.1, 1.0, math.inf, math.nan, None, "0.5", True],
    "adaptation_backtracks": [-1, 1.5, None, "2", True],
    "adaptation_backtrack_bound": [1, "yes", None],
    "adaptation_backtrack_fresh": [1, "yes", None],
    "normalize_observations": ["yes", 0, None],
    "seed": ["x", 1.5, True],
    "meta": [1, "true", None],
    "constrained": [0, "no", None],
    "torch_num_threads": [0, -1, 1.5, True],
    "critics": [1, "yes", None],
    "critic_privileged": [1, "no", None, True],  # True: needs critics=True
    "critic_hidden": [[], [64, 0], [1.5], 64, None],
    "critic_epochs": [0, -1, 1.5, True, None],
    "critic_lr": [0.0, -1e-3, math.nan, math.inf, "0.001", None],
}

CASES = [(variant, field, value) for variant in CONFIGS for field, values in INVALID.items()
         for value in values]


def test_the_table_covers_every_training_field():
    # cost_limit: the deprecated name of train_cost_limit (test_rllib_config)
    fields = set(setter_fields(MetaCPOConfig.training)) - {"cost_limit"} | {"gamma"}
    assert fields <= set(INVALID), sorted(fields - set(INVALID))


@pytest.mark.parametrize("variant,field,value", CASES,
                         ids=[f"{v}-{f}-{x!r}" for v, f, x in CASES])
def test_invalid_value_names_the_field(variant, field, value):
    import ray

    config = CONFIGS[variant]().environment("PointNav").env_runners(num_env_runners=2)
    config.training(**{field: value})
    with pytest.raises(ValueError, match=rf"^{field}:") as info:
        config.validate()
    assert str(info.value).count(f"{field}:") == 1
    assert not ray.is_initialized()


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_build_algo_fails_before_any_worker(variant):
    """build_algo with an invalid field raises before Ray is started."""
    import ray

    assert not ray.is_initialized()
    config = (CONFIGS[variant]().environment("PointNav").env_runners(num_env_runners=2)
              .training(cg_damping=math.inf))
    with pytest.raises(ValueError, match=r"^cg_damping:"):
        config.build_algo()
    assert not ray.is_initialized()
