"""The CLI as real processes: relative paths end to end (train -> checkpoint -> adapt) with a
progress bar on a terminal, SIGTERM / Ctrl-C ending MLflow runs as KILLED, ``metacpo ui``
stopping its whole process group, and ``tune.run("MetaCPO")`` after ``import metacpo_rllib``.
Every process is started here and stopped by its PID."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from helpers import alive, descendants
from terminal import group_alive as _group_alive, kill_by_pid as _kill_by_pid, run_on_pty

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "metacpo_rllib.cli"]
NOISE = ("on the new API stack", "RLModule(config=", "Install gputil")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TQDM_DISABLE")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _wait_for(check: Callable[[], bool], proc: subprocess.Popen, timeout: float,
              what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {err[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _run_on_pty(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal got) of ``argv`` with stderr on a terminal."""
    return run_on_pty(argv, cwd, _env())


def test_relative_paths_train_then_adapt(tmp_path) -> None:
    """The README's relative ``--checkpoint-dir`` works end to end: a checkpoint, then
    ``adapt --checkpoint`` with the same relative path. The terminal shows a progress bar
    with an ETA and none of Ray's known start-up noise."""
    code, out, term = _run_on_pty(
        [*CLI, "train", "--family", "ConstrainedBandit", "--iterations", "2",
         "--tasks-per-iteration", "2", "--episodes-per-task", "2", "--test-tasks", "1",
         "--checkpoint-dir", "rel/ckpt", "--json", "reports/train.json", "--no-mlflow"],
        tmp_path)
    assert code == 0, out[-2000:] + term[-3000:]
    ckpt = tmp_path / "rel" / "ckpt"
    assert f"checkpoint: {ckpt}" in out
    assert (ckpt / "rllib_checkpoint.json").is_file()
    report = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert report["checkpoint"] == str(ckpt) and len(report["train"]) == 2
    assert "iter   2/2" in out and "{" not in out  # the JSON went to the file only
    # tqdm's bar: "train:  50%|█████     | 1/2 [00:01<00:01, ...]" (elapsed<remaining)
    assert re.search(r"train:\s+\d+%\|.*\| 1/2 \[\d\d:\d\d<\d\d:\d\d", term), term[-3000:]
    assert not [n for n in NOISE if n in term], term[-3000:]

    adapt = subprocess.run([*CLI, "adapt", "--checkpoint", "rel/ckpt", "--tasks", "2",
                            "--steps", "1", "--json", "adapt.json"], cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=300,
                           start_new_session=True)
    assert adapt.returncode == 0, adapt.stdout[-2000:] + adapt.stderr[-3000:]
    assert f"MetaCPO from {ckpt} on 2 ConstrainedBandit test tasks" in adapt.stdout
    assert "{" not in adapt.stdout
    data = json.loads((tmp_path / "adapt.json").read_text())
    assert data["steps"] == [0, 1] and len(data["tasks"]) == 2
    assert not [n for n in NOISE if n in adapt.stderr], adapt.stderr[-3000:]


def _runs(db: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _peek(db: Path) -> tuple[dict[str, str], int]:
    """(run name -> status, number of logged ``metacpo/post_return_mean`` values), read
    with sqlite3 read-only: an MLflow client here would race the command's own creation
    of the store's tables."""
    if not db.exists():
        return {}, 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            runs = dict(conn.execute("SELECT name, status FROM runs").fetchall())
            logged = conn.execute("SELECT count(*) FROM metrics WHERE key = "
                                  "'metacpo/post_return_mean'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet, or locked
        return {}, 0
    return runs, logged


@pytest.mark.parametrize("command,sig", [
    (["train", "--family", "ConstrainedBandit", "--iterations", "1000", "--test-tasks", "0"],
     signal.SIGTERM),
    (["compare", "--family", "ConstrainedBandit", "--iterations", "1000", "--seeds", "0",
      "--test-tasks", "0", "--max-concurrent", "1", "--quiet"], signal.SIGINT),
])
def test_interrupt_ends_mlflow_runs_as_killed(tmp_path, command, sig) -> None:
    """A running train (SIGTERM) or compare (Ctrl-C: SIGINT) ends with 128 + signal,
    its MLflow runs KILLED (a comparison's parent and trial runs alike) and its Ray
    processes gone."""
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen([*CLI, *command], cwd=tmp_path, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _wait_for(lambda: _peek(db)[1] > 0, proc, 240, "a logged iteration")
        running = _peek(db)[0]
        assert running and set(running.values()) == {"RUNNING"}, running
        # compare: one trial at a time (--max-concurrent 1) + the parent run
        assert len(running) == (2 if command[0] == "compare" else 1)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err[-3000:]
        assert f"metacpo {command[0]}: interrupted ({sig.name})" in err, err[-3000:]
        statuses = {r.info.run_name: r.info.status for r in _runs(db)}
        assert len(statuses) == len(running)
        assert set(statuses.values()) == {"KILLED"}, statuses
        deadline = time.monotonic() + 30  # Ray's processes go with ray.shutdown()
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group_alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        _kill_by_pid(_group_alive(proc.pid))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_ui_stops_its_whole_process_group_on_sigterm(tmp_path) -> None:
    """SIGTERM to ``metacpo ui`` stops the ``mlflow ui`` server and everything it started."""
    port = _free_port()
    proc = subprocess.Popen([*CLI, "ui", "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--port", str(port)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    spawned: list[int] = []
    try:
        _wait_for(lambda: _serving(port), proc, 180, "the MLflow UI")
        spawned = sorted(descendants(proc.pid))
        assert spawned, "metacpo ui started no server process"
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and [p for p in spawned if alive(p)]:
            time.sleep(0.2)
        assert not [p for p in spawned if alive(p)], "server processes left running"
        assert not _serving(port)
        with socket.socket() as s:  # the port is free again (no listener; TIME_WAIT of the
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # probes may remain)
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_by_pid([p for p in spawned if alive(p)])


TUNE_RUN = """
import shutil, sys, tempfile
import metacpo_rllib
import ray
from ray import tune
tmp = tempfile.mkdtemp(prefix="mcpo-tune-", dir="/tmp")
ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tmp,
         log_to_driver=False, configure_logging=False)
try:
    analysis = tune.run("MetaCPO", config={"env": "ConstrainedBandit", "tasks_per_iteration": 2,
                                           "episodes_per_task": 2, "seed": 0},
                        stop={"training_iteration": 1}, storage_path=sys.argv[1], verbose=0)
    trial = analysis.trials[0]
    print(trial.trainable_name, trial.status, trial.last_result["training_iteration"])
finally:
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
"""


def test_tune_run_by_name_after_importing_the_package(tmp_path) -> None:
    """The README's ``tune.run("MetaCPO", ...)`` with nothing but ``import metacpo_rllib``."""
    proc = subprocess.run([sys.executable, "-c", TUNE_RUN, str(tmp_path / "ray_results")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.split()[-3:] == ["MetaCPO", "TERMINATED", "1"]
