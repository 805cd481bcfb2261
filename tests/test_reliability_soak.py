"""Reliability soak: 30+ meta-iterations with 2 EnvRunners on the toy PointNav CMDP.

The resident memory of the driver and of both EnvRunner processes stays flat (after a
warm-up), every iteration's metrics are finite, and after ``algo.stop()`` /
``ray.shutdown()`` no Ray process started for the test (nor MLflow's) is left.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings

import pytest
import ray

from helpers import alive, descendants
from metacpo_rllib.experiments import tracking
from metacpo_rllib.rllib import MetaCPOConfig

pytestmark = pytest.mark.ray

ITERATIONS = 32
WARMUP = 4           # RSS reference point: after this many iterations (imports, caches)
#: Allowed growth from the reference to the end, per process: a leak of the per-iteration
#: data (episodes, weights, Learner graphs: ~1 MB an iteration) would exceed this.
RSS_TOLERANCE_MB = 40.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for {pid}")


def test_soak_memory_flat_and_no_leaked_processes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = descendants(os.getpid())
    temp_dir = tempfile.mkdtemp(prefix="mcpo-soak-", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             log_to_driver=False, configure_logging=False)
    started: set[int] = set()
    try:
        config = (MetaCPOConfig().environment("PointNav", env_config={"horizon": 20})
                  .env_runners(num_env_runners=2)
                  .training(tasks_per_iteration=2, episodes_per_task=2, seed=0))
        algo = config.build_algo()
        try:
            runners = dict(algo.env_runner_group.foreach_env_runner(
                lambda r: (r.worker_index, os.getpid()), local_env_runner=False))
            pids = {"driver": os.getpid(), **{f"runner{i}": p for i, p in runners.items()}}
            samples: dict[str, list[float]] = {name: [] for name in pids}
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("error", tracking.TrackingWarning)
                with tracking.log_training_run(
                        config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}") as run:
                    for i in range(1, ITERATIONS + 1):
                        results = algo.train()
                        run.log_result(results)
                        m = results["metacpo"]
                        assert m["meta_iteration"] == i and m["num_tasks_dropped"] == 0
                        assert math.isfinite(m["pre_return_mean"])
                        assert math.isfinite(m["update"]["outer_kl"])
                        for name, pid in pids.items():
                            samples[name].append(rss_mb(pid))
            elapsed = time.perf_counter() - start
            started = descendants(os.getpid()) - before
            assert set(results["metacpo"]["per_task"]["runner"]) == {1, 2}
        finally:
            algo.stop()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    report = {name: (round(v[WARMUP - 1], 1), round(v[-1], 1), round(max(v), 1))
              for name, v in samples.items()}
    print(f"\nsoak: {ITERATIONS} iterations in {elapsed:.1f} s; RSS MB "
          f"(after iteration {WARMUP}, after {ITERATIONS}, max): {report}")
    for name, values in samples.items():
        growth = values[-1] - values[WARMUP - 1]
        assert growth <= RSS_TOLERANCE_MB, (name, report[name])
    assert started, "the test's Ray processes were not seen"
    deadline = time.time() + 20
    while [p for p in started if alive(p)] and time.time() < deadline:
        time.sleep(0.5)
    assert not [p for p in started if alive(p)], "Ray/MLflow processes left after shutdown"
    assert not [p for p in pids.values() if p != os.getpid() and alive(p)]
