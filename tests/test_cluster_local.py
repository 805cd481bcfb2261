"""Local head + worker Ray cluster: `ray job submit` of Meta-CPO runs on both nodes, logs to MLflow,
checkpoints into the storage path; every process is stopped afterwards."""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("metacpo_local_cluster",
                                               ROOT / "cluster" / "local_cluster.py")
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)

EXPERIMENT = "cluster-test"


@pytest.fixture(scope="module")
def cluster():
    """Head + 1 worker node (1 CPU each) + MLflow server under a short temp root; stopped
    by process group afterwards (also when a test or the start-up failed), and checked gone."""
    root = Path(tempfile.mkdtemp(prefix="mcc-", dir="/tmp"))  # short: Ray's socket paths
    try:
        start = time.perf_counter()
        state = lc.up(root, workers=1, cpus_per_node=1, object_store_mb=200)
        print(f"cluster up in {time.perf_counter() - start:.1f}s")
        yield state
    finally:
        start = time.perf_counter()
        left = lc.down(root)
        print(f"cluster down in {time.perf_counter() - start:.1f}s")
        logs = {p.name: lc.tail(str(p), 1500) for p in (root / "logs").glob("*.log")} \
            if left else {}
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the test cluster still alive: {left}; logs: {logs}"


@pytest.fixture(scope="module")
def train_job(cluster):
    """`ray job submit` of a short Meta-CPO training (PointNav, 2 EnvRunners, 2 iterations)
    logging to the MLflow server, checkpointing into the storage path."""
    sid = f"metacpo-test-{int(time.time())}"
    entry, where = lc.train_entrypoint(cluster, sid, iterations=2, env_runners=2,
                                       experiment=EXPERIMENT)
    start = time.perf_counter()
    out = lc.submit(cluster, entry, sid, timeout=600)
    elapsed = time.perf_counter() - start
    print(f"train job: {elapsed:.1f}s\n{out.stdout[-4000:]}\n{out.stderr[-2000:]}")
    return {"sid": sid, "out": out, "where": where, "info": lc.job_info(cluster, sid)}


def test_cluster_has_two_nodes_and_token_auth(cluster):
    roles = lc.node_roles(cluster)
    assert sorted(roles.values()) == ["head", "worker1"]
    # Without the token the job API refuses (Ray 2.60: token auth on).
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(cluster.dashboard + "/api/jobs/", timeout=10)
    assert err.value.code == 401


def test_train_job_succeeds(train_job):
    assert train_job["out"].returncode == 0, train_job["out"].stdout[-3000:]
    assert train_job["info"]["status"] == "SUCCEEDED"
    assert "iter   2/2" in train_job["out"].stdout


def test_env_runners_ran_on_both_nodes(cluster, train_job):
    roles = lc.node_roles(cluster)
    runners = lc.job_actors(cluster, train_job["info"]["job_id"])
    assert len(runners) == 2, runners
    assert {roles.get(r["node_id"]) for r in runners} == {"head", "worker1"}, (runners, roles)
    # ... and both sampled tasks (the report's per-task runner index, both iterations) ...
    report = json.loads(Path(train_job["where"]["report"]).read_text())
    assert [sorted(set(it["per_task"]["runner"])) for it in report["train"]] == [[1, 2]] * 2
    # ... and the metrics record the node of every task: both nodes, each iteration.
    assert [{roles.get(n) for n in it["per_task"]["node_id"]} for it in report["train"]] \
        == [{"head", "worker1"}] * 2
    assert [it["num_nodes_sampling"] for it in report["train"]] == [2, 2]
    # ... and the job's log names the nodes (cluster/job_entry.py).
    assert "EnvRunners ran on 2 node(s)" in train_job["out"].stdout


def test_mlflow_run_has_metrics(cluster, train_job):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["num_env_runners"] == "2"
    history = client.get_metric_history(run.info.run_id, "metacpo/pre_return_mean")
    assert sorted(m.step for m in history) == [1, 2]
    assert "test/return_mean" in run.data.metrics
    assert run.data.tags["checkpoint_path"] == train_job["where"]["checkpoint"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "checkpoint" in artifacts


def test_checkpoint_in_storage_path(cluster, train_job):
    checkpoint = Path(train_job["where"]["checkpoint"])
    assert checkpoint.is_relative_to(Path(cluster["storage"]))
    assert checkpoint.is_dir() and any(checkpoint.iterdir())
    assert (checkpoint / "rllib_checkpoint.json").is_file() or \
        (checkpoint / "metadata.json").is_file(), sorted(p.name for p in checkpoint.iterdir())


def test_sweep_job_uses_shared_storage_and_mlflow(cluster):
    """`metacpo sweep` as a job: Tune trials checkpoint into the storage path, and the MLflow
    callback (on the driver, on the head) logs one finished run per trial."""
    from mlflow.tracking import MlflowClient

    sid = f"metacpo-sweep-{int(time.time())}"
    storage = Path(cluster["storage"]) / "sweeps"
    entry = [lc.python_exe(), "cluster/job_entry.py", "sweep", "tune_configs/smoke_pointnav.yaml",
             "--mlflow-uri", cluster.mlflow_uri, "--mlflow-experiment", f"{EXPERIMENT}-sweep",
             "--storage-path", str(storage), "--quiet"]
    start = time.perf_counter()
    out = lc.submit(cluster, entry, sid, timeout=600)
    print(f"sweep job: {time.perf_counter() - start:.1f}s\n{out.stdout[-3000:]}")
    assert out.returncode == 0 and lc.job_info(cluster, sid)["status"] == "SUCCEEDED"
    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    experiment = client.get_experiment_by_name(f"{EXPERIMENT}-sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    checkpoints = sorted(storage.glob("*/*/checkpoint_*"))
    assert len(checkpoints) == 2, checkpoints
    trials = lc.job_actors(cluster, lc.job_info(cluster, sid)["job_id"],
                           class_name="SweepAlgorithm")
    roles = lc.node_roles(cluster)
    print("trial nodes:", [roles.get(t["node_id"]) for t in trials])
    assert len(trials) == 2 and all(t["node_id"] in roles for t in trials)


def test_plain_metacpo_train_joins_the_cluster(cluster):
    """The README's target form: `ray job submit ... -- metacpo train ...` with no wrapper."""
    sid = f"metacpo-plain-{int(time.time())}"
    entry = [lc.venv_tool("metacpo"), "train", "--family", "PointNav", "--iterations", "1",
             "--num-env-runners", "2", "--test-tasks", "0", "--num-cpus", "1"]
    out = lc.submit(cluster, entry, sid, timeout=300)
    info = lc.job_info(cluster, sid)
    assert info["status"] == "SUCCEEDED", out.stdout[-2000:]
    runners = lc.job_actors(cluster, info["job_id"])
    roles = lc.node_roles(cluster)
    assert {roles.get(r["node_id"]) for r in runners} == {"head", "worker1"}
