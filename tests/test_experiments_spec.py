"""Sweep specs (no Ray): the shipped tune_configs validate, bad files give one clear error
naming the key before anything starts, and the MLflow helpers' pure parts."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import stop_process_group
from metacpo_rllib import cli
from metacpo_rllib.experiments import commands, tracking
from metacpo_rllib.experiments.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "tune_configs").glob("*.yaml"))

GOOD = """\
name: t
algorithm: MetaCPO
family: PointNav
iterations: 2
training:
  tasks_per_iteration: 2
grid:
  seed: [0, 1]
"""


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.num_trials() >= 1 and spec.algorithms


def test_shipped_configs_cover_the_families() -> None:
    specs = {p.name: load_spec(p) for p in CONFIGS}
    for family in ("PointCircle", "CarCircleHazard", "PointButton"):
        sweep = specs[f"{family.lower()}_sweep.yaml"]
        assert sweep.family == family
        assert {"train_cost_limit", "trust_region_delta", "seed"} <= set(sweep.grid)
        assert len(sweep.grid["seed"]) >= 2
        compare = specs[f"{family.lower()}_compare.yaml"]
        assert compare.algorithms == ["MetaCPO", "MetaTRPO", "CPO", "TRPO"]
        assert compare.grid["seed"] == sweep.grid["seed"]
    assert specs["smoke_pointnav.yaml"].family == "PointNav"


def test_family_sweeps_train_with_the_comparisons_batch_and_inner_radius() -> None:
    """A sweep varies its grid around the measured training recipe, not around older settings."""
    specs = {p.name: load_spec(p) for p in CONFIGS}
    for family in ("pointcircle", "carcirclehazard", "pointbutton"):
        sweep, compare = specs[f"{family}_sweep.yaml"], specs[f"{family}_compare.yaml"]
        for field in ("tasks_per_iteration", "episodes_per_task", "inner_delta"):
            assert sweep.training[field] == compare.training[field], (family, field)


BAD = {
    # case: (text of GOOD to replace, its replacement, the key the error must start with)
    "unknown top-level key": ("iterations: 2", "iterations: 2\nlearning_rate: 3", "learning_rate"),
    "unknown training key": ("tasks_per_iteration: 2", "tasks_per_iteraton: 2",
                             "training.tasks_per_iteraton"),
    "wrong type": ("tasks_per_iteration: 2", "tasks_per_iteration: two",
                   "training.tasks_per_iteration"),
    "wrong type in grid": ("seed: [0, 1]", "seed: [0, x]", "grid.seed"),
    "invalid grid value": ("seed: [0, 1]", "trust_region_delta: [0.01, -1.0]",
                           "grid.trust_region_delta"),
    "unknown family": ("family: PointNav", "family: PointNavv", "family"),
    "unknown algorithm": ("algorithm: MetaCPO", "algorithm: [MetaCPO, PPO]", "algorithm"),
    "unknown env override": ("iterations: 2", "iterations: 2\nenv_config: {horizn: 3}",
                             "env_config"),
    "bad adaptation": ("iterations: 2", "iterations: 2\nadaptation: {test_tasks: -1}",
                       "adaptation.test_tasks"),
    "unknown search space": ("seed: [0, 1]", "inner_delta: {normal: [0.0, 1.0]}",
                             "grid.inner_delta.normal"),
    "search space not one key": ("seed: [0, 1]",
                                 "inner_delta: {uniform: [0.01, 0.1], choice: [0.1]}",
                                 "grid.inner_delta"),
    "range upside down": ("seed: [0, 1]", "inner_delta: {uniform: [0.1, 0.01]}",
                          "grid.inner_delta.uniform"),
    "range not two numbers": ("seed: [0, 1]", "inner_delta: {uniform: [0.01, x]}",
                              "grid.inner_delta.uniform"),
    "loguniform from zero": ("seed: [0, 1]", "inner_delta: {loguniform: [0, 0.1]}",
                             "grid.inner_delta.loguniform"),
    "empty choice": ("seed: [0, 1]", "inner_delta: {choice: []}", "grid.inner_delta.choice"),
    "float range for an integer field": ("seed: [0, 1]", "seed: {uniform: [0, 5]}",
                                         "grid.seed"),
    "invalid value at a range end": ("seed: [0, 1]",
                                     "trust_region_delta: {uniform: [-1.0, 0.1]}",
                                     "grid.trust_region_delta"),
    "unknown scheduler": ("iterations: 2", "iterations: 2\nscheduler: {type: pbt}",
                          "scheduler.type"),
    "unknown scheduler key": ("iterations: 2",
                              "iterations: 2\nscheduler: {type: asha, grace: 1}",
                              "scheduler.grace"),
    "grace period past max_t": ("iterations: 2",
                                "iterations: 2\nscheduler: {type: asha, grace_period: 3}",
                                "scheduler.grace_period"),
    "reduction factor 1": ("iterations: 2",
                           "iterations: 2\nscheduler: {type: asha, reduction_factor: 1}",
                           "scheduler.reduction_factor"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_names_the_key(case: str) -> None:
    import yaml

    old, new, key = BAD[case]
    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_load(GOOD.replace(old, new)))
    message = str(info.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_bad_file_fails_in_cli_before_anything_starts(tmp_path, monkeypatch, capsys) -> None:
    import ray

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("tasks_per_iteration: 2", "tasks_per_iteration: 2.5"))
    commands.register()
    code = cli.main(["sweep", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "training.tasks_per_iteration" in err[0], err
    assert str(bad) in err[0]
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_invalid_yaml_and_missing_file(tmp_path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_overrides_are_validated(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    spec = load_spec(path, {"tune.num_samples": 3, "iterations": None, "grid.seed": [4]})
    assert spec.num_samples == 3 and spec.iterations == 2 and spec.grid["seed"] == [4]
    with pytest.raises(SpecError, match="^.*tune.max_concurrent"):
        load_spec(path, {"tune.max_concurrent": 0})


def test_cost_limit_is_the_deprecated_name_of_train_cost_limit() -> None:
    """``training.cost_limit`` / ``grid.cost_limit`` still work, renamed with one warning;
    both names set is one error naming both."""
    base = _yaml(GOOD)
    with pytest.warns(FutureWarning, match=r"^training\.cost_limit: deprecated, use "
                                           r"training\.train_cost_limit") as caught:
        spec = parse_spec({**base, "training": {**base["training"], "cost_limit": 7.0}})
    assert len(caught) == 1 and spec.training["train_cost_limit"] == 7.0
    assert "cost_limit" not in spec.training
    with pytest.warns(FutureWarning, match=r"^grid\.cost_limit"):
        spec = parse_spec({**base, "grid": {"seed": [0], "cost_limit": [3.0, 6.0]}})
    assert list(spec.grid["train_cost_limit"]) == [3.0, 6.0]
    with pytest.raises(SpecError, match=r"^training\.cost_limit, grid\.train_cost_limit: "
                                        r"both set"):
        parse_spec({**base, "training": {**base["training"], "cost_limit": 7.0},
                    "grid": {"seed": [0], "train_cost_limit": [3.0]}})


def test_param_space_is_compact_with_grid_search() -> None:
    from metacpo_rllib.experiments.sweep import param_space

    spec = parse_spec({**_yaml(GOOD), "grid": {"seed": [0, 1], "train_cost_limit": [3.0, 6.0]}})
    space = param_space(spec, "CPO")
    assert space["env"] == "PointNav" and space["tasks_per_iteration"] == 2
    assert space["seed"] == {"grid_search": [0, 1]}
    assert space["train_cost_limit"] == {"grid_search": [3.0, 6.0]}
    assert len(space) < 10  # only what differs from CPOConfig's defaults


SEARCH = GOOD.replace("grid:\n  seed: [0, 1]\n", """\
grid:
  seed: {grid_search: [0, 1]}
  trust_region_delta: {loguniform: [0.001, 0.1]}
  inner_delta: {uniform: [0.005, 0.02]}
  inner_steps: {choice: [1, 2]}
scheduler: {type: asha, max_t: 2, grace_period: 1, reduction_factor: 2}
""")


def test_search_spaces_and_scheduler_parse_to_tune_objects() -> None:
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.sample import Categorical, Float

    from metacpo_rllib.experiments.spec import Scheduler, SearchSpace
    from metacpo_rllib.experiments.sweep import (METRIC, param_space, tune_scheduler,
                                                 tuner_param_space)

    spec = parse_spec(_yaml(SEARCH))
    assert spec.grid["seed"] == [0, 1]  # {grid_search: [...]} is a plain grid
    assert spec.grid["trust_region_delta"] == SearchSpace("loguniform", (0.001, 0.1))
    assert spec.scheduler == Scheduler("asha", 2, 1, 2)
    assert spec.num_trials() == 2  # sampled fields add no grid points
    space = param_space(spec, "MetaCPO")
    assert space["seed"] == {"grid_search": [0, 1]}
    assert isinstance(space["inner_delta"], Float) and space["inner_delta"].lower == 0.005
    assert isinstance(space["trust_region_delta"].sampler, Float._LogUniform)
    assert isinstance(space["inner_steps"], Categorical)
    assert space["inner_steps"].categories == [1, 2]
    one = tuner_param_space(parse_spec({**_yaml(GOOD), "algorithm": ["MetaCPO", "CPO"]}))
    assert one["algorithm"] == {"grid_search": ["MetaCPO", "CPO"]}
    assert one["seed"] == {"grid_search": [0, 1]} and one["tasks_per_iteration"] == 2
    scheduler = tune_scheduler(spec)
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._max_t == 2 and scheduler._reduction_factor == 2
    assert tune_scheduler(parse_spec(_yaml(GOOD))) is None
    assert METRIC == "metacpo/post_return_mean"


def test_bad_search_space_fails_in_cli_before_anything_starts(tmp_path, monkeypatch,
                                                             capsys) -> None:
    import ray

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEARCH.replace("loguniform: [0.001, 0.1]", "loguniform: [-1, 0.1]"))
    commands.register()
    assert cli.main(["sweep", str(bad)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "grid.trust_region_delta.loguniform: expected 0 < low" in line
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()


def test_params_tags_and_metric_names() -> None:
    from metacpo_rllib.experiments.spec import build_config

    config = build_config(parse_spec(_yaml(GOOD)), "MetaTRPO", {"seed": 1})
    params = tracking.training_params(config)
    assert params["family"] == "PointNav" and params["seed"] == "1"
    # the limits used (the family's when the config leaves them unset), not "None"
    assert "cost_limit" not in params
    assert (params["train_cost_limit"], params["test_cost_limit"]) == ("10.0", "5.0")
    assert params["constrained"] == "False" and params["inner_steps"] == "1"
    # compact: the family, its overrides, gamma and the training() fields, not the whole
    # AlgorithmConfig dict (hundreds of keys)
    from metacpo_rllib.experiments.spec import setter_fields
    from metacpo_rllib.rllib import MetaCPOConfig

    training_fields = setter_fields(MetaCPOConfig.training) - {"cost_limit"}
    assert set(params) == {"family", "env_config", "num_env_runners", "gamma",
                           "test_cost_limit", *training_fields}
    assert len(params) < len(config.to_dict()) / 4
    assert all(len(v) <= 6000 for v in params.values())
    tags = tracking.run_tags(config, "sweep")
    assert tags["algorithm"] == "MetaTRPO" and tags["family"] == "PointNav"
    assert tags["seed"] == "1" and tags["git_commit"]
    result = {"metacpo": {"post_return_mean": 1.5, "num_tasks": 2, "update": {"kl(x)": 0.1},
                          "per_task": {"task_id": [0, 1]}},
              "config": {"gamma": 0.99}, "time_this_iter_s": 0.5, "done": False,
              "training_iteration": 3}
    assert tracking.result_metrics(result) == {
        "metacpo/post_return_mean": 1.5, "metacpo/num_tasks": 2.0,
        "metacpo/update/kl_x_": 0.1, "time_this_iter_s": 0.5}


def test_default_store_and_artifact_location(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:1")
    assert tracking.resolve_tracking_uri() == "http://example.invalid:1"
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.chdir(tmp_path)
    location = tracking.artifact_location("sqlite:///mlflow.db", "my sweep")
    assert location == (tmp_path / "mlruns" / "my-sweep").as_uri()
    assert tracking.artifact_location("http://127.0.0.1:5000", "x") is None


def _yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_command_serves_the_embedded_store(tmp_path) -> None:
    """``metacpo ui``'s command line starts an MLflow UI on 127.0.0.1 for the sqlite store."""
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = commands.ui_command(uri, "127.0.0.1", port)
    assert "--default-artifact-root" in cmd and (tmp_path / "mlruns").as_uri() in cmd
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, "mlflow ui exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.time() < deadline, "mlflow ui did not come up"
                time.sleep(0.5)
    finally:
        stop_process_group(proc)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
