"""Reliability: an EnvRunner process killed (SIGKILL to its PID) in the middle of a
meta-iteration; the iteration completes, the runner is restarted by RLlib
(``restart_failed_env_runners``) and gets tasks again, training continues."""
from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest

from metacpo_rllib.rllib import MetaCPOConfig

pytestmark = pytest.mark.ray


def runner_pids(algo) -> dict[int, int]:
    """{EnvRunner index: process id} of the healthy remote EnvRunners."""
    return dict(algo.env_runner_group.foreach_env_runner(
        lambda r: (r.worker_index, os.getpid()), local_env_runner=False))


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_a_runner_pid_mid_iteration(ray_local):
    config = (MetaCPOConfig().environment("PointNav", env_config={"horizon": 60})
              .env_runners(num_env_runners=2)
              .training(tasks_per_iteration=4, episodes_per_task=6, seed=0)
              .fault_tolerance(restart_failed_env_runners=True,
                               env_runner_health_probe_timeout_s=60))
    algo = config.build_algo()
    try:
        algo.train()
        pids = runner_pids(algo)
        assert set(pids) == {1, 2} and os.getpid() not in pids.values()
        victim = pids[1]
        original = algo.sample_episodes
        calls = {"n": 0, "killed_at": None}

        def kill() -> None:
            calls["killed_at"] = time.perf_counter()
            os.kill(victim, signal.SIGKILL)

        def sample_and_kill(*args, **kwargs):
            # Round 1 of the iteration (after round 0 and the inner steps): runner 1 is
            # killed 0.3 s into sampling, while its share of the jobs is in flight.
            calls["n"] += 1
            if calls["n"] == 2:
                timer = threading.Timer(0.3, kill)
                timer.start()
                try:
                    return original(*args, **kwargs)
                finally:
                    timer.join()
            return original(*args, **kwargs)

        algo.sample_episodes = sample_and_kill
        start = time.perf_counter()
        results = algo.train()
        elapsed = time.perf_counter() - start
        del algo.sample_episodes
        assert calls["killed_at"] is not None and not pid_alive(victim)
        m = results["metacpo"]
        assert m["meta_iteration"] == 2 and m["num_tasks_dropped"] == 0
        assert m["update"]["num_tasks_updated"] == 4.0
        assert all(math.isfinite(v) for v in (m["pre_return_mean"], m["post_return_mean"]))
        # The restarted runner is a new process and gets (and samples) tasks again: within
        # two minutes of iterations (a new runner takes longer to start on a busy machine).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            results = algo.train()
            if set(results["metacpo"]["per_task"]["runner"]) == {1, 2}:
                break
        assert set(results["metacpo"]["per_task"]["runner"]) == {1, 2}
        new_pids = runner_pids(algo)
        assert set(new_pids) == {1, 2} and new_pids[1] != victim
        assert new_pids[2] == pids[2]
        assert results["metacpo"]["num_tasks_dropped"] == 0
        assert results["fault_tolerance"]["num_remote_worker_restarts"] >= 1
        print(f"iteration with the kill: {elapsed:.1f} s; runner 1 pid {victim} -> "
              f"{new_pids[1]}")
    finally:
        algo.stop()
