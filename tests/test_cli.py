"""The ``metacpo`` CLI: train -> checkpoint -> adapt end-to-end on PointNav; bad flags fail fast."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from metacpo_rllib import cli

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_address():
    """A Ray instance of this test process, for the CLI to join through $RAY_ADDRESS."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="mcpo-cli-", dir="/tmp")
    context = ray.init(address="local", num_cpus=2, include_dashboard=False,
                       _temp_dir=temp_dir, log_to_driver=False, configure_logging=False)
    yield context.address_info["address"]
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _run(*args: str, cwd, ray_address: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    proc = subprocess.run([sys.executable, "-m", "metacpo_rllib.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("argv,field", [
    (["train", "--family", "PointNav", "--episodes-per-task", "0"], "--episodes-per-task"),
    (["train", "--family", "NoSuchFamily"], "family"),
    (["train", "--family", "PointNav", "--algo", "cpo", "--inner-steps", "2"], "inner_steps"),
    (["train", "--family", "PointNav", "--iterations", "0"], "--iterations"),
    (["adapt", "--checkpoint", "x", "--steps", "-1"], "--steps"),
])
def test_bad_flags_fail_before_ray_starts(argv, field, capsys):
    """(Runs before the end-to-end test, whose module-scoped Ray would still be up.)"""
    import ray

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    assert not ray.is_initialized()


def test_subcommands_are_listed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "adapt" in out


def test_train_then_adapt_end_to_end(tmp_path, ray_address):
    """train on its embedded Ray (as `make train`), adapt joining a cluster ($RAY_ADDRESS)."""
    ckpt, train_json, adapt_json = tmp_path / "ckpt", tmp_path / "train.json", tmp_path / "a.json"
    train = _run("train", "--family", "PointNav", "--algo", "meta-cpo", "--iterations", "2",
                 "--num-env-runners", "1", "--seed", "3", "--tasks-per-iteration", "2",
                 "--episodes-per-task", "2", "--env-config", '{"horizon": 30}',
                 "--checkpoint-dir", str(ckpt), "--test-tasks", "2", "--adapt-steps", "1",
                 "--eval-interval", "2", "--eval-episodes", "3", "--inner-delta", "0.02",
                 "--json", str(train_json), cwd=tmp_path)
    out = train.stdout
    assert "ray: embedded local instance (2 CPUs)" in train.stderr
    assert "iter   1/2" in out and "iter   2/2" in out and "violation" in out
    assert "step 0" in out and "step 1" in out
    # θ evaluated at iteration 2 only; the adaptation ends with a one-line verdict
    assert out.count("evaluation of θ on 4 training tasks x 3 episodes") == 1, out
    assert out.strip().splitlines()[-1].startswith("verdict: "), out
    report = json.loads(train_json.read_text())
    assert len(report["train"]) == 2 and report["checkpoint"] == str(ckpt)
    assert report["adapt"]["steps"] == [0, 1] and len(report["adapt"]["tasks"]) == 2
    assert (ckpt / "rllib_checkpoint.json").exists()
    # tracked by default in the embedded MLflow store of the working directory
    from mlflow.tracking import MlflowClient

    from metacpo_rllib.envs import make_family

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["algorithm"] == "MetaCPO"
    assert runs[0].info.run_name == "MetaCPO-PointNav-seed3"
    limits = make_family("PointNav", horizon=30).cost_limits  # the limits used, not None
    assert runs[0].data.params["train_cost_limit"] == str(limits["train"])
    assert runs[0].data.params["test_cost_limit"] == str(limits["test"])
    assert (client.get_experiment(runs[0].info.experiment_id).tags["mlflow.experimentKind"]
            == "custom_model_development")
    history = client.get_metric_history(runs[0].info.run_id, "metacpo/post_return_mean")
    assert [m.step for m in history] == [1, 2]

    adapt = _run("adapt", "--checkpoint", str(ckpt), "--family", "PointNav", "--split",
                 "test", "--cost-limit", "5", "--steps", "2", "--tasks", "3",
                 "--json", str(adapt_json), cwd=tmp_path, ray_address=ray_address)
    assert f"ray: joined the cluster at {ray_address}" in adapt.stderr
    lines = adapt.stdout.splitlines()
    assert any("step 2" in line for line in lines)
    table_rows = [line for line in lines if line.strip().startswith("100000")]
    # test-split task ids 1000000..1000002, in the learning-batch and the evaluation table
    assert len(table_rows) == 6
    report = json.loads(adapt_json.read_text())
    assert report["steps"] == [0, 1, 2] and report["algorithm"] == "MetaCPO"
    assert all(len(t["eval"]["cost_ucb"]) == 3 for t in report["tasks"])
    assert report["eval"]["episodes_per_task"] == 20  # --eval-episodes default
    assert [t["cost_limit"] for t in report["tasks"]] == [5.0, 5.0, 5.0]
    assert all(t["task"]["split"] == "test" for t in report["tasks"])
    assert "{" not in adapt.stdout  # --json FILE writes the file only
    assert f"wrote {adapt_json}" in adapt.stderr
