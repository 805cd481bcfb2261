"""``metacpo eval``: a real checkpoint evaluated without Ray on the same episodes as
``algo.adapt``'s evaluation, given tasks with MLflow tracking, a PointCircle episode video
rendered offscreen with real physics, one-line errors for bad input; and the progress bars
of ``eval``, ``adapt`` and Tune sweeps."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from terminal import run_on_pty

from metacpo_rllib import cli

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
# Runs the CLI, then says whether Ray was imported on the way.
RAY_FREE_CLI = [sys.executable, "-c",
                "import sys; from metacpo_rllib import cli; code = cli.main(sys.argv[1:]); "
                "print('ray imported:', any(m == 'ray' or m.startswith('ray.') "
                "for m in sys.modules)); sys.exit(code)"]
EPISODES = 6


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TQDM_DISABLE")}
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="module")
def bandit(tmp_path_factory, ray_local):
    """A trained ConstrainedBandit checkpoint and ``algo.adapt``'s evaluation (step 0) of
    the two test tasks ``eval`` samples by default, with the rounds ``on_round`` saw."""
    from metacpo_rllib import MetaCPOConfig

    algo = (MetaCPOConfig().environment("ConstrainedBandit")
            .training(tasks_per_iteration=2, episodes_per_task=2, seed=0)).build_algo()
    rounds: list[tuple[int, int]] = []
    try:
        algo.train()
        ckpt = algo.save_to_path(str(tmp_path_factory.mktemp("bandit") / "ckpt"))
        tasks = algo.family.sample_tasks(2, "test", seed=12345)
        algo.on_round = lambda k, n: rounds.append((k, n))
        report = algo.adapt(tasks, steps=1, eval_episodes=EPISODES)
    finally:
        algo.stop()
    return {"checkpoint": ckpt, "adapt": report, "rounds": rounds}


def test_eval_reproduces_adapt_evaluation_without_ray(bandit, tmp_path) -> None:
    """eval's episodes are adapt's evaluation episodes at step 0 (same seed: same env seeds
    and action noise), its statistics the same; no Ray is imported; the terminal shows a
    progress bar with ETA."""
    code, out, term = run_on_pty(
        [*RAY_FREE_CLI, "eval", "--checkpoint", bandit["checkpoint"], "--episodes",
         str(EPISODES), "--json", "eval.json"], tmp_path, _env(), timeout=120)
    assert code == 0, out[-2000:] + term[-3000:]
    assert "ray imported: False" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["family"] == "ConstrainedBandit" and report["episodes_per_task"] == EPISODES
    adapted = bandit["adapt"]["tasks"]
    assert [t["task_id"] for t in report["tasks"]] == [t["task_id"] for t in adapted]
    for ours, theirs in zip(report["tasks"], adapted):
        ev = theirs["eval"]
        assert ours["episode_cost"] == ev["episode_cost"][0]
        assert ours["episode_return"] == ev["episode_return"][0]
        assert ours["cost_ucb"] == pytest.approx(ev["cost_ucb"][0])
        assert ours["within_limit"] == (ours["cost"] <= ours["cost_limit"])
        assert ours["certified"] == (ours["cost_ucb"] <= ours["cost_limit"])
        assert ours["cost_limit"] == 5.0  # the family's test limit
        line = next(x for x in out.splitlines() if x.split()[:1] == [str(ours["task_id"])])
        assert f"{ours['return']:.2f}" in line and f"{ours['cost_ucb']:.2f}" in line
    assert re.search(rf"eval:\s+\d+%\|.*\| \d+/{2 * EPISODES} \[\d\d:\d\d<\d\d:\d\d", term), \
        term[-3000:]


def test_eval_given_task_logged_to_mlflow(bandit, tmp_path, capsys) -> None:
    """A task given as JSON with its own limit, mean actions, the table logged as MLflow
    metrics and text."""
    from mlflow.tracking import MlflowClient

    params = bandit["adapt"]["tasks"][0]["task"]["params"]
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = cli.main(["eval", "--checkpoint", bandit["checkpoint"], "--task",
                     json.dumps({"params": params, "cost_limit": 60}), "--episodes", "3",
                     "--deterministic", "--json", str(tmp_path / "eval.json"), "--mlflow",
                     "--mlflow-uri", db])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval.json").read_text())
    (task,) = report["tasks"]
    assert task["task"]["params"] == params and task["cost_limit"] == 60.0
    assert report["deterministic"] and len(task["episode_cost"]) == 3
    assert task["within_limit"] and task["certified"]  # 20 pulls cost at most 20: far below 60
    client = MlflowClient(tracking_uri=db)
    (run,) = client.search_runs([client.get_experiment_by_name(
        "eval-ConstrainedBandit").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval/cost_mean"] == pytest.approx(task["cost"])
    assert run.data.metrics["eval/certified_rate"] == 1.0
    assert run.data.params["deterministic"] == "True"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} == \
        {"eval/table.txt", "eval/report.json"}


def test_eval_saved_policy_folder(bandit, tmp_path, capsys) -> None:
    """A policy folder with an ``adapt --save`` manifest: family and task come from
    ``policies.json``; the episodes are those of adapt's evaluation of that task."""
    import shutil

    task = bandit["adapt"]["tasks"][1]
    folder = tmp_path / "saved" / f"task-{task['task_id']}"
    shutil.copytree(Path(bandit["checkpoint"]) / "learner_group/learner/rl_module/"
                    "default_policy", folder)
    (folder.parent / "policies.json").write_text(json.dumps({
        "algorithm": "MetaCPO", "family": "ConstrainedBandit", "theta": "theta",
        "policies": [{"task_id": task["task_id"], "cost_limit": task["cost_limit"],
                      "task": task["task"], "steps": 0, "folder": folder.name}]}))
    code = cli.main(["eval", "--checkpoint", str(folder), "--episodes", str(EPISODES),
                     "--json", str(tmp_path / "eval.json")])
    assert code == 0, capsys.readouterr().err
    (ours,) = json.loads((tmp_path / "eval.json").read_text())["tasks"]
    assert ours["task"] == task["task"]
    assert ours["episode_cost"] == task["eval"]["episode_cost"][0]
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(folder), "--family", "PointNav"]) == 2
    assert f"not PointNav (as {folder.parent / 'policies.json'} says)" in \
        capsys.readouterr().err


def test_eval_pointcircle_video(tmp_path) -> None:
    """A policy folder on PointCircle (real physics): one short episode recorded with
    MuJoCo's offscreen renderer into a video whose frames move, logged to MLflow."""
    from mlflow.tracking import MlflowClient

    from metacpo_rllib.envs import make_family
    from metacpo_rllib.render import read_frames
    from metacpo_rllib.rllib.module import GaussianMLPModule

    env = make_family("PointCircle").make_env()
    GaussianMLPModule(observation_space=env.observation_space, action_space=env.action_space,
                      model_config={"policy_hidden": [16]}).save_to_path(
        str(tmp_path / "policy"))
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [*RAY_FREE_CLI, "eval", "--checkpoint", "policy", "--family", "PointCircle",
         "--tasks", "1", "--episodes", "1", "--env-config", '{"max_episode_steps": 40}',
         "--video", "videos", "--video-size", "96", "--mlflow", "--mlflow-uri", db],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ray imported: False" in proc.stdout
    videos = sorted((tmp_path / "videos").iterdir())
    assert [v.name for v in videos] == ["PointCircle-task1000000-episode0.mp4"]
    assert f"video: {videos[0]}" in proc.stdout
    frames = read_frames(videos[0])
    assert len(frames) == 41 and frames[0].shape == (96, 96, 3)  # the reset and 40 steps
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])
    client = MlflowClient(tracking_uri=db)
    (run,) = client.search_runs([client.get_experiment_by_name(
        "eval-PointCircle").experiment_id])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "videos")] == \
        [f"videos/{videos[0].name}"]


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{tmp}/nope"], "--checkpoint: {tmp}/nope does not exist"),
    (["--checkpoint", "{tmp}/file"], "--checkpoint: {tmp}/file is not a directory"),
    (["--checkpoint", "{tmp}/empty"], "--family: required"),
    (["--checkpoint", "{tmp}/empty", "--family", "PointNav"],
     "--checkpoint: no policy weights under"),
    (["--checkpoint", "{ckpt}", "--family", "Nope"], "--family: unknown family 'Nope'"),
    (["--checkpoint", "{ckpt}", "--family", "PointNav"],
     "--family: the checkpoint's policy was trained on ConstrainedBandit, not PointNav"),
    (["--checkpoint", "{ckpt}", "--episodes", "0"],
     "argument --episodes: expected an integer >= 1, got 0"),
    (["--checkpoint", "{ckpt}", "--cost-limit", "-1"], "argument --cost-limit"),
    (["--checkpoint", "{ckpt}", "--task", '{"arms": 3}'], "--task: task 1"),
    (["--checkpoint", "{ckpt}", "--split", "test_tight"],
     "--split: ConstrainedBandit has the splits train, test"),
    (["--checkpoint", "{ckpt}", "--video", "{tmp}/v"],
     "--video: only the safety-gymnasium families"),
    (["--checkpoint", "{ckpt}", "--json", "{tmp}"], "--json: {tmp} is a directory"),
    (["--checkpoint", "{ckpt}", "--env-config", '{"horizon": 0}'], "--env-config:"),
])
def test_eval_bad_input(bandit, tmp_path, capsys, argv, message) -> None:
    """Bad input: exit code 2 and one line naming the flag, before any episode."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{ckpt}", bandit["checkpoint"])

    code = cli.main(["eval", *map(fill, argv)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and fill(message) in err, err
    assert err.startswith("metacpo eval: error:")


def test_adapt_progress_bar(bandit, tmp_path) -> None:
    """``metacpo adapt`` on a terminal: a bar over the adaptation steps with an ETA;
    ``on_round`` saw each round of ``algo.adapt``."""
    assert bandit["rounds"] == [(0, 2), (1, 2)]
    code, out, term = run_on_pty(
        [sys.executable, "-m", "metacpo_rllib.cli", "adapt", "--checkpoint",
         bandit["checkpoint"], "--tasks", "1", "--steps", "1", "--eval-episodes", "2"],
        tmp_path, _env())
    assert code == 0, out[-2000:] + term[-3000:]
    assert re.search(r"adapt:\s+50%\|.*\| 1/2 \[\d\d:\d\d<\d\d:\d\d", term), term[-3000:]


def test_tune_progress_callback(ray_local, tmp_path) -> None:
    """The sweep bar counts every trial iteration of a Tuner: trials × iterations."""
    from ray import tune

    from metacpo_rllib.experiments.progress import TrialIterationProgress

    def trainable(config: dict) -> None:
        for i in range(3):
            tune.report({"score": config["x"] * i})

    progress = TrialIterationProgress(iterations=3)
    tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])},
               run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[progress],
                                         verbose=0)).fit()
    assert progress.total == 6 and progress.done == 6


def test_gl_backend_fallback() -> None:
    """Without MUJOCO_GL the first backend that works is chosen and set (a broken one is
    passed over); when none works, one error names each one tried."""
    env = _env()
    env.pop("MUJOCO_GL", None)
    script = ("import os; from metacpo_rllib import render; render.GL_BACKENDS = {}; "
              "print(render.select_gl_backend(), os.environ['MUJOCO_GL'])")
    proc = subprocess.run([sys.executable, "-c", script.format("('nope', 'egl', 'osmesa')")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen, exported = proc.stdout.split()
    assert chosen in ("egl", "osmesa") and exported == chosen
    proc = subprocess.run([sys.executable, "-c", script.format("('nope',)")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "RenderError: no offscreen OpenGL backend works (nope: " in proc.stderr


def test_eval_usage_error_as_module_process(bandit, tmp_path) -> None:
    """``python -m metacpo_rllib.cli eval`` with bad input: one line and exit code 2 (the
    command module's UsageError is the one ``main`` catches)."""
    proc = subprocess.run([sys.executable, "-m", "metacpo_rllib.cli", "eval", "--checkpoint",
                           bandit["checkpoint"], "--family", "PointNav"], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "metacpo eval: error: --family: the checkpoint's policy was trained on "
        "ConstrainedBandit, not PointNav"]
