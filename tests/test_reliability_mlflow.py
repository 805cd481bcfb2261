"""Reliability: the MLflow tracking server is killed in the middle of a training run.

A real ``mlflow server`` on 127.0.0.1 (started by the test, in its own process group) is
SIGKILLed after iteration 2; training goes on with ONE TrackingWarning, the metrics of
the iterations without a server are kept and sent once the server is back (restarted on
the same port and store); the run ends FINISHED with every iteration's metrics. If the
server never comes back, the unsent metrics are written to a local JSON file. No server
process is left afterwards.
"""
from __future__ import annotations

import json
import time
import warnings

import pytest

from helpers import running_server
from metacpo_rllib.experiments import tracking

pytestmark = pytest.mark.ray


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with running_server(tmp_path) as srv:
        yield srv


def make_algo():
    from metacpo_rllib.rllib import MetaCPOConfig

    config = (MetaCPOConfig().environment("PointNav", env_config={"horizon": 20})
              .env_runners(num_env_runners=0)
              .training(tasks_per_iteration=2, episodes_per_task=2, seed=0))
    return config, config.build_algo()


def run_training(config, algo, uri: str, iterations: int, on_iteration) -> tuple:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.log_training_run(config, tracking_uri=uri) as run:
            for i in range(1, iterations + 1):
                on_iteration(i)
                run.log_result(algo.train())
    return run, [w for w in caught if issubclass(w.category, tracking.TrackingWarning)]


def test_server_killed_mid_run_metrics_resume(ray_local, server):
    from mlflow.tracking import MlflowClient

    config, algo = make_algo()

    def on_iteration(i: int) -> None:
        if i == 3:
            server.kill()          # iterations 3, 4 without a server
        if i == 5:
            server.start()         # back (same port, same store) before iteration 5

    try:
        start = time.perf_counter()
        run, caught = run_training(config, algo, server.uri, 6, on_iteration)
        elapsed = time.perf_counter() - start
    finally:
        algo.stop()
    assert len(caught) == 1 and server.uri in str(caught[0].message)
    assert not run.pending and run.unsent_path is None
    client = MlflowClient(tracking_uri=server.uri)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    history = client.get_metric_history(run.run_id, "metacpo/pre_cost_mean")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    print(f"6 iterations with the server down for 2: {elapsed:.1f} s")


def test_server_that_never_returns_keeps_metrics_locally(ray_local, server):
    config, algo = make_algo()
    try:
        run, caught = run_training(config, algo, server.uri, 3,
                                   lambda i: server.kill() if i == 2 else None)
    finally:
        algo.stop()
    assert len(caught) == 1
    assert run.unsent_path is not None and run.unsent_path.is_file()
    saved = json.loads(run.unsent_path.read_text())
    assert saved["run_id"] == run.run_id
    steps = {m["step"] for m in saved["metrics"] if m["key"] == "metacpo/pre_cost_mean"}
    assert steps == {2, 3}
