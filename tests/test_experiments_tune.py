"""The experiment service end to end on the toy PointNav CMDP: Tune sweeps (Tuner and tune.run)
logging to a real MLflow server over HTTP and to the embedded sqlite store, the train helper,
an unreachable server (one warning, training completes), and the four-algorithm comparison."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import stop_process_group
from metacpo_rllib import cli
from metacpo_rllib.experiments import commands, tracking
from metacpo_rllib.rllib import MetaCPOConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "tune_configs" / "smoke_pointnav.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (one worker, temp sqlite store and artifact
    folder), in its own process group, stopped by its process group id."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited:\n" + (root / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("mlflow server did not answer /health within 120 s")
                time.sleep(0.5)
        yield {"uri": uri, "root": root}
    finally:
        stop_process_group(proc)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test runs in its own folder, with no tracking URI from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    commands.register()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    """All artifact file paths of a run (recursively)."""
    out = set()
    for info in client.list_artifacts(run_id, path or None):
        out |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def _check_sweep_runs(uri: str, experiment: str, seeds: set[int], kind: str = "sweep"
                      ) -> list:
    """The smoke sweep's runs: compact params, tags, metric histories, artifacts."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(seeds)
    assert {int(r.data.tags["seed"]) for r in runs} == seeds
    for run in runs:
        assert run.info.status == "FINISHED"
        params, tags = run.data.params, run.data.tags
        assert params["family"] == "PointNav" and params["tasks_per_iteration"] == "2"
        assert params["iterations"] == "2" and json.loads(params["env_config"]) == {"horizon": 40}
        assert params["seed"] == tags["seed"]
        # the training fields, not the whole AlgorithmConfig dict (hundreds of keys)
        assert len(params) < len(MetaCPOConfig().to_dict()) / 4
        assert tags["algorithm"] == "MetaCPO" and tags["family"] == "PointNav"
        assert tags["kind"] == kind and len(tags["git_commit"]) >= 7
        history = client.get_metric_history(run.info.run_id, "metacpo/post_return_mean")
        assert [m.step for m in history] == [1, 2]
        assert [m.step for m in client.get_metric_history(run.info.run_id,
                                                          "test/return_mean")] == [0, 1]
        assert "metacpo/update/outer_kl" in run.data.metrics
        assert not any(k.startswith("config/") for k in run.data.metrics)
        files = _artifacts(client, run.info.run_id)
        assert {"adaptation/table.txt", "adaptation/report.json", "plots/curves.png"} <= files
        assert any(f.startswith("checkpoint/") for f in files)
        assert Path(tags["checkpoint_path"]).is_dir()
        table = client.download_artifacts(run.info.run_id, "adaptation/table.txt",
                                           tempfile.mkdtemp(prefix="metacpo-art-"))
        assert "violation" in Path(table).read_text()
        _check_policy_model(uri, run)
    return runs


def _check_policy_model(uri: str, run) -> None:
    """The trial's final checkpoint, logged as the run's pyfunc model ``policy``, predicts
    the checkpoint policy's mean actions."""
    import mlflow

    from metacpo_rllib import load_policy

    (output,) = run.outputs.model_outputs
    local = mlflow.artifacts.download_artifacts(f"models:/{output.model_id}",
                                                tracking_uri=uri,
                                                dst_path=tempfile.mkdtemp(prefix="metacpo-m-"))
    obs = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    expected = load_policy(run.data.tags["checkpoint_path"]).act(obs, deterministic=True)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(local).predict(obs), expected,
                               atol=1e-6)


def test_sweep_logs_to_a_real_mlflow_server(ray_local, mlflow_server, tmp_path) -> None:
    code = cli.main(["sweep", SMOKE, "--mlflow-uri", mlflow_server["uri"],
                     "--storage-path", str(tmp_path / "ray"), "--quiet"])
    assert code == 0
    _check_sweep_runs(mlflow_server["uri"], "smoke-pointnav", {0, 1})
    # artifacts went through the server (proxied) into its folder; nothing local
    assert list((mlflow_server["root"] / "artifacts").rglob("curves.png"))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_sweep_logs_to_the_embedded_sqlite_store(ray_local, tmp_path, capsys) -> None:
    code = cli.main(["sweep", SMOKE, "--storage-path", "ray", "--quiet", "--json", "sweep.json"])
    assert code == 0
    assert "best trial (metacpo/post_return_mean, max): MetaCPO-PointNav-seed" in (
        capsys.readouterr().out)
    assert (tmp_path / "mlflow.db").exists()
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert sorted(r["seed"] for r in summary["rows"]) == [0, 1]
    for row in summary["rows"]:  # per-step adaptation means (steps 0 and 1)
        assert len(row["adapt"]["violation_rate"]) == 2
        assert row["test_batch_cost"] == row["adapt"]["mean_cost"][-1]
        # scored on the evaluation episodes (smoke spec: 4 per task and step), and θ's
        # training evaluation after the last iteration
        assert row["test_eval_cost"] == row["adapt"]["eval"]["mean_cost"][-1]
        assert row["test_within"] == row["adapt"]["eval"]["within_limit_rate"][-1]
        assert math.isfinite(row["train_eval_cost"]) and row["env_steps"] > 0
    assert summary["grid"] == {"seed": [0, 1]} and len(summary["provenance"]["commit"]) == 40
    assert summary["provenance"]["command"] == (f"metacpo sweep {SMOKE} --storage-path ray "
                                                "--quiet --json sweep.json")
    runs = _check_sweep_runs("sqlite:///mlflow.db", "smoke-pointnav", {0, 1})
    for run in runs:  # the explicit artifact root next to the database
        assert (tmp_path / "mlruns" / "smoke-pointnav" / run.info.run_id / "artifacts"
                / "plots" / "curves.png").exists()


def test_tune_run_with_the_registered_name(ray_local, tmp_path) -> None:
    """Users' ``tune.run("MetaCPO", config=...)`` sweeps work, with the same callback."""
    from ray import tune

    from metacpo_rllib.experiments.spec import load_spec
    from metacpo_rllib.experiments.sweep import mlflow_callback, param_space

    spec = load_spec(SMOKE, {"grid.seed": [3]})
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    analysis = tune.run("MetaCPO", config=param_space(spec, "MetaCPO"),
                        stop={"training_iteration": spec.iterations},
                        callbacks=[mlflow_callback(spec, uri)],
                        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
                        storage_path=str(tmp_path / "ray"), verbose=0)
    (trial,) = analysis.trials
    assert trial.status == "TERMINATED"
    assert math.isfinite(trial.last_result["adaptation"]["return_mean"])
    _check_sweep_runs(uri, "smoke-pointnav", {3})


def _train_config():
    from metacpo_rllib import MetaCPOConfig

    return (MetaCPOConfig().environment("PointNav", env_config={"horizon": 30})
            .training(tasks_per_iteration=2, episodes_per_task=2, seed=0))


def test_train_helper_logs_one_run(ray_local, tmp_path) -> None:
    from metacpo_rllib.experiments.tracking import log_training_run

    config = _train_config()
    algo = config.build_algo()
    try:
        with log_training_run(config, tracking_uri="sqlite:///mlflow.db",
                              params={"iterations": 2}) as run:
            for _ in range(2):
                run.log_result(algo.train())
            run.log_checkpoint(algo.save_to_path(str(tmp_path / "ckpt")))
            tasks = algo.family.sample_tasks(2, "test", seed=1)
            run.log_adaptation(algo.adapt(tasks, steps=1))
    finally:
        algo.stop()
    client = _client("sqlite:///mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("train-PointNav")
                                    .experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["kind"] == "train" and logged.data.params["iterations"] == "2"
    history = client.get_metric_history(logged.info.run_id, "metacpo/pre_cost_mean")
    assert [m.step for m in history] == [1, 2]
    files = _artifacts(client, logged.info.run_id)
    assert {"plots/curves.png", "adaptation/table.txt"} <= files
    assert any(f.startswith("checkpoint/") for f in files)


def _tracking_warnings(caught) -> list:
    return [w for w in caught if issubclass(w.category, tracking.TrackingWarning)]


def test_unreachable_server_train_completes_with_one_warning(ray_local, caplog) -> None:
    from metacpo_rllib.experiments.tracking import log_training_run

    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    config = _train_config()
    algo = config.build_algo()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with log_training_run(config, tracking_uri=uri) as run:
                results = [algo.train() for _ in range(3)]
                for result in results:
                    run.log_result(result)
                run.log_adaptation(algo.adapt(algo.family.sample_tasks(1, "test", seed=0)))
    finally:
        algo.stop()
    assert [r["training_iteration"] for r in results] == [1, 2, 3]
    (warning,) = _tracking_warnings(caught)
    assert uri in str(warning.message)
    assert not [r for r in caplog.records if r.name.startswith("mlflow")
                and r.levelname in ("WARNING", "ERROR")]


def test_unreachable_server_sweep_completes_with_one_warning(ray_local, tmp_path) -> None:
    from metacpo_rllib.experiments.spec import load_spec
    from metacpo_rllib.experiments.sweep import run_sweep

    spec = load_spec(SMOKE, {"grid.seed": [0], "iterations": 1})
    uri = f"http://127.0.0.1:{_free_port()}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grids = run_sweep(spec, tracking_uri=uri, storage_path=str(tmp_path), verbose=0)
    (result,) = list(grids["MetaCPO"])
    assert result.error is None and result.metrics["training_iteration"] == 1
    assert "adaptation" in result.metrics
    assert len(_tracking_warnings(caught)) == 1


def test_compare_writes_figure_table_and_json(ray_local, tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'cmp.db'}"
    out = tmp_path / "report"
    code = cli.main(["compare", "--family", "PointNav", "--seeds", "0", "1",
                     "--iterations", "2", "--test-tasks", "2", "--adapt-steps", "1",
                     "--tasks-per-iteration", "2", "--episodes-per-task", "2",
                     "--env-config", '{"horizon": 30}', "--out", str(out),
                     "--mlflow-uri", uri, "--storage-path", str(tmp_path / "ray"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    table = (out / "comparison.md").read_text()
    algorithms = ("MetaCPO", "MetaTRPO", "CPO", "TRPO")
    for name in algorithms:
        (row,) = [line for line in table.splitlines() if line.startswith(f"| {name} | ")
                  and line.count("±") == 3]
        assert row.endswith("| 2 |")  # two seeds
    data = json.loads((out / "comparison.json").read_text())
    assert set(data["summary"]) == set(algorithms)
    for name in algorithms:
        seeds = data["runs"][name]
        assert [s["seed"] for s in seeds] == [0, 1]
        assert all(len(s["return"]) == 2 and len(s["adapt"]["mean_cost"]) == 2 for s in seeds)
        assert all(s["test_limit"] < s["train_limit"] for s in seeds)  # tighter at test
    # the same training tasks and test tasks per seed: CPO and TRPO start identically
    assert data["runs"]["CPO"][0]["return"][0] == data["runs"]["TRPO"][0]["return"][0]
    for name in algorithms:  # budget and per-task numbers for the results page
        for s in data["runs"][name]:
            assert s["env_steps"] == 2 * 2 * 30 * (2 if name.startswith("Meta") else 1) * 2
            assert np.array(s["adapt"]["task_cost"]).shape == (2, 2)
    prov = data["provenance"]
    assert len(prov["commit"]) == 40 and prov["wall_s"] > 0
    assert prov["command"].startswith("metacpo compare --family PointNav --seeds 0 1 ")
    _check_results_page(tmp_path, data)
    client = _client(uri)
    exp = client.get_experiment_by_name("compare-PointNav")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "comparison"]
    children = [r for r in runs if r is not parent]
    assert len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["algorithm"] for r in children} == set(algorithms)
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{a}-PointNav-seed{s}" for a in algorithms for s in (0, 1))
    assert parent.data.params["test_cost_limit"] == str(data["runs"]["CPO"][0]["test_limit"])
    assert parent.data.params["train_cost_limit"] == str(data["runs"]["CPO"][0]["train_limit"])
    note = parent.data.tags["mlflow.note.content"]  # the run page shows figure and table
    assert f"comparison%2Fcomparison.png&run_uuid={parent.info.run_id}" in note
    assert table.strip() in note
    for name in algorithms:  # the four side by side in the parent's metrics
        assert parent.data.metrics[f"{name}/eval_cost"] == pytest.approx(
            data["summary"][name]["eval_cost"]["mean"])
        assert f"{name}/violation_rate" in parent.data.metrics
    assert (f"runs: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
            "?workflowType=machine_learning") in printed
    names = {frozenset(r.data.metrics) for r in children}
    assert len(names) == 1  # the same metric names for all four: side by side in the UI
    assert {"metacpo/post_return_mean", "test/cost_mean"} <= set(next(iter(names)))
    assert {"comparison/comparison.png", "comparison/comparison.md",
            "comparison/comparison.json"} <= _artifacts(client, parent.info.run_id)


SEARCH_SPEC = """\
name: bandit-search
algorithm: [MetaCPO, CPO]
family: ConstrainedBandit
iterations: 1
training: {tasks_per_iteration: 2, episodes_per_task: 2}
grid:
  seed: [0, 1]
  trust_region_delta: {loguniform: [0.001, 0.1]}
  inner_delta: {choice: [0.005, 0.02]}
adaptation: {test_tasks: 1, eval_episodes: 2}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
"""


def test_one_tuner_over_algorithms_and_seeds_with_search_spaces(ray_local, tmp_path,
                                                               capfd) -> None:
    """A YAML with search spaces and ASHA: one Tuner runs algorithms × seeds (one Tune
    experiment), ``get_best_result()`` works, the progress table has return / cost /
    violation columns, and the MLflow runs are named, tagged and parametrised for the UI."""
    from metacpo_rllib.experiments.spec import load_spec
    from metacpo_rllib.experiments.sweep import METRIC, run_sweep

    path = tmp_path / "search.yaml"
    path.write_text(SEARCH_SPEC)
    spec = load_spec(path)
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    results = run_sweep(spec, tracking_uri=uri, storage_path=str(tmp_path / "ray"), verbose=1)
    grid = results.result_grid
    assert len(grid) == 4 and grid.num_errors == 0
    assert len({Path(r.path).parent for r in grid}) == 1  # one Tune experiment
    assert {a: sorted(r.config["seed"] for r in rs) for a, rs in results.items()} == {
        "MetaCPO": [0, 1], "CPO": [0, 1]}
    for result in grid:
        assert 0.001 <= result.config["trust_region_delta"] <= 0.1
        assert result.config["inner_delta"] in (0.005, 0.02)
        assert Path(result.path).name.startswith(
            f"{result.config['algorithm']}-ConstrainedBandit-seed{result.config['seed']}_")
    # a trial's checkpoint loads as its own algorithm, like a `metacpo train` checkpoint
    from ray.rllib.algorithms.algorithm import Algorithm

    (cpo,) = [r for r in results["CPO"] if r.config["seed"] == 1]
    algo = Algorithm.from_checkpoint(cpo.checkpoint.path)
    try:
        assert type(algo).__name__ == "CPO" and algo.config.meta is False
        assert algo.config.seed == 1
    finally:
        algo.stop()
    best = grid.get_best_result()
    values = [r.metrics["metacpo"]["post_return_mean"] for r in grid]
    assert best.metrics["metacpo"]["post_return_mean"] == max(values)
    assert math.isfinite(grid.get_best_result("adaptation/eval_return_mean", "max")
                         .metrics["adaptation"]["eval_return_mean"])
    assert METRIC == "metacpo/post_return_mean"
    table = capfd.readouterr().out
    header = [line for line in table.splitlines() if line.startswith("| Trial name")][-1]
    for column in ("algorithm", "seed", "return", "cost", "violation", "test return",
                   "test violation"):
        assert f" {column} " in header, header
    assert "CPO-ConstrainedBandit-seed1 " in table

    client = _client(uri)
    exp = client.get_experiment_by_name("bandit-search")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [
        "CPO-ConstrainedBandit-seed0", "CPO-ConstrainedBandit-seed1",
        "MetaCPO-ConstrainedBandit-seed0", "MetaCPO-ConstrainedBandit-seed1"]
    for run in runs:
        params, tags = run.data.params, run.data.tags
        assert run.info.run_name == (f"{tags['algorithm']}-ConstrainedBandit-"
                                     f"seed{tags['seed']}")
        assert params["train_cost_limit"] == "10.0" and params["test_cost_limit"] == "5.0"
        assert "cost_limit" not in params
        assert 0.001 <= float(params["trust_region_delta"]) <= 0.1


def test_experiment_tag_is_added_to_an_existing_experiment(tmp_path) -> None:
    client = _client(f"sqlite:///{tmp_path / 'x.db'}")
    old = client.create_experiment("made-elsewhere")
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.ensure_experiment(client, "made-elsewhere", "sqlite:///x.db") == old
    assert (client.get_experiment(old).tags["mlflow.experimentKind"]
            == "custom_model_development")


def _check_results_page(tmp_path, data: dict) -> None:
    """The results page renders the comparison: a row per algorithm in each per-step table
    (evaluation return, cost, upper bound, within, certified; the learning batches' cost),
    the figures, and the within-limit fractions of the evaluation episodes."""
    from research import results_page

    folder = tmp_path / "results" / "PointNav"
    folder.mkdir(parents=True)
    (folder / "comparison.json").write_text(json.dumps(data))
    page = results_page.main(["--results", str(tmp_path / "results"),
                              "--out", str(tmp_path / "RESULTS.md")]).read_text()
    for fig in ("training.png", "adaptation.png"):
        assert (folder / fig).read_bytes().startswith(b"\x89PNG")
        assert f"](results/PointNav/{fig})" in page
    assert (tmp_path / "results" / "calibration.png").read_bytes().startswith(b"\x89PNG")
    rows = [line for line in page.splitlines() if line.startswith("| MetaCPO | ")]
    assert len(rows) == len(results_page.STEP_TABLES)
    assert all(r.count("±") == 2 for r in rows)  # steps 0 and 1, two seeds
    within = [s["adapt"]["eval"]["within_limit_rate"][1] for s in data["runs"]["MetaCPO"]]
    assert f"{np.mean(within):.2f} ± {np.std(within, ddof=1):.2f}" in rows[3]
    assert data["provenance"]["commit"] in page
