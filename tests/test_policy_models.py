"""Adapted policies as objects and policies as MLflow models.

``algo.adapt(..., return_policies=True)`` hands back, per task, the policy the report's last
step measured (replayed here on the evaluation episodes' own env seeds); ``Policy.save``
writes an RLModule checkpoint. ``metacpo train`` / ``adapt --save --mlflow`` log θ and the
adapted policies as pyfunc models with a signature to a real ``mlflow server`` (sqlite
store, model registry); loaded with ``mlflow.pyfunc.load_model`` in a process without Ray,
they predict the actions of ``load_policy(...).act(obs, deterministic=True)``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import running_server
from metacpo_rllib import cli

pytestmark = pytest.mark.ray

HORIZON = {"horizon": 20}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite backend store, hence a model registry)."""
    with running_server(tmp_path_factory.mktemp("mlflow-registry")) as srv:
        yield srv


def _rollout_returns(family, task, policy, episodes: int, eval_seed: int) -> float:
    """Mean return of ``policy``'s mean action on the evaluation episodes' env seeds."""
    from metacpo_rllib.rllib.episodes import episode_streams, evaluation_seed

    env = family.make_env(task)
    returns = []
    for reset_seed, _ in episode_streams(episodes, evaluation_seed(eval_seed, task.to_dict())):
        obs, _ = env.reset(seed=reset_seed)
        total, done = 0.0, False
        while not done:
            obs, reward, term, trunc, _ = env.step(policy.act(obs, deterministic=True))
            total += reward
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns))


def test_adapt_returns_the_policies_it_measured(tmp_path, ray_local) -> None:
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    from metacpo_rllib import MetaCPOConfig, load_policy

    config = (MetaCPOConfig().environment("PointNav", env_config=HORIZON)
              .training(tasks_per_iteration=2, episodes_per_task=2, seed=0))
    algo = config.build_algo()
    try:
        algo.train()
        tasks = algo.family.sample_tasks(2, "test", seed=1)
        report = algo.adapt(tasks, steps=1, eval_episodes=4, deterministic=True,
                            return_policies=True)
        theta = algo.as_policy()
        plain = algo.adapt(tasks[:1], steps=0, eval_episodes=0)
    finally:
        algo.stop()
    assert "policies" not in plain
    policies = report.pop("policies")
    json.dumps(report)  # the rest of the report stays JSON
    assert len(policies) == 2
    obs = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    for task, entry, policy in zip(tasks, report["tasks"], policies):
        measured = entry["eval_mean_action"]["return"]
        # θ at step 0, the returned policy at the last step: the same episodes replayed
        assert _rollout_returns(algo.family, task, theta, 4, 0) == pytest.approx(
            measured[0], rel=1e-4, abs=1e-5)
        assert _rollout_returns(algo.family, task, policy, 4, 0) == pytest.approx(
            measured[-1], rel=1e-4, abs=1e-5)
        assert not np.allclose(policy.act(obs, True), theta.act(obs, True), atol=1e-6)
        # saved: an RLModule checkpoint, loaded by load_policy and by RLlib alike
        folder = policy.save(tmp_path / f"task-{task.task_id}")
        np.testing.assert_array_equal(load_policy(folder).act(obs, True),
                                      policy.act(obs, True))
        module = RLModule.from_checkpoint(str(folder))
        with torch.no_grad():
            mean = module.forward_inference({"obs": torch.from_numpy(obs)})[
                "action_dist_inputs"][:, :2].numpy()
        np.testing.assert_allclose(np.clip(mean, -1, 1), policy.act(obs, True), atol=1e-6)


PREDICT = """
import json, sys
import numpy as np
import mlflow

obs = np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
out = {}
for uri in json.loads(sys.argv[1]):
    model = mlflow.pyfunc.load_model(uri)
    schema = model.metadata.signature
    out[uri] = {
        "actions": model.predict(obs).tolist(),
        "inputs": [[str(s.type), list(s.shape)] for s in schema.inputs.inputs],
        "outputs": [[str(s.type), list(s.shape)] for s in schema.outputs.inputs],
        "ray_imported": any(m == "ray" or m.startswith("ray.") for m in sys.modules),
        "code": sys.modules["metacpo_rllib"].__file__}
print(json.dumps(out))
"""


def _predict(uri: str, model_uris: list[str], obs: np.ndarray) -> dict:
    """``mlflow.pyfunc.load_model(model_uri).predict(obs)`` for each model, in one fresh
    process (no Ray, no repository on the path: the model brings its code)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", PREDICT, json.dumps(model_uris),
                           json.dumps(obs.tolist())], capture_output=True, text=True,
                          timeout=300, cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_train_and_adapt_log_registered_pyfunc_models(tmp_path, ray_local, server,
                                                       monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from metacpo_rllib import load_policy

    monkeypatch.chdir(tmp_path)
    ckpt, saved = tmp_path / "ckpt", tmp_path / "policies"
    assert cli.main(["train", "--family", "PointNav", "--env-config", json.dumps(HORIZON),
                     "--iterations", "1", "--checkpoint-dir", "ckpt", "--test-tasks", "0",
                     "--mlflow-uri", server.uri, "--register-model", "pointnav-theta"]) == 0
    assert cli.main(["adapt", "--checkpoint", "ckpt", "--tasks", "2", "--steps", "1",
                     "--eval-episodes", "0", "--save", "policies", "--mlflow-uri",
                     server.uri, "--register-model", "pointnav-adapted"]) == 0
    client = MlflowClient(tracking_uri=server.uri)
    obs = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)

    # θ of the train run: its logged model, registered as version 1
    (train_run,) = client.search_runs(
        [client.get_experiment_by_name("train-PointNav").experiment_id])
    (output,) = train_run.outputs.model_outputs
    (version,) = client.search_model_versions("name='pointnav-theta'")
    assert version.version == "1"
    assert output.model_id in f"{version.model_id} {version.source}"  # the run's model
    expected = load_policy(ckpt).act(obs, deterministic=True)
    manifest = json.loads((saved / "policies.json").read_text())
    versions = {v.tags["task_id"]: v for v in
                client.search_model_versions("name='pointnav-adapted'")}
    uris = ["models:/pointnav-theta/1", f"models:/{output.model_id}"] + [
        f"models:/pointnav-adapted/{v.version}" for v in versions.values()]
    predicted = _predict(server.uri, uris, obs)
    for model_uri in uris[:2]:
        out = predicted[model_uri]
        np.testing.assert_allclose(out["actions"], expected, atol=1e-6)
        assert out["inputs"] == [["float32", [-1, 6]]]
        assert out["outputs"] == [["float32", [-1, 2]]]
    assert not any(out["ray_imported"] for out in predicted.values())
    assert "/code/metacpo_rllib/" in predicted[uris[0]]["code"]  # the model's own copy

    # the adapt run: one model per task, each a version of pointnav-adapted
    assert (saved / "theta").is_dir() and len(manifest["policies"]) == 2
    (adapt_run,) = client.search_runs(
        [client.get_experiment_by_name("adapt-PointNav").experiment_id])
    assert adapt_run.data.tags["kind"] == "adapt" and adapt_run.info.status == "FINISHED"
    assert len(adapt_run.outputs.model_outputs) == 2
    assert sorted(versions) == sorted(str(p["task_id"]) for p in manifest["policies"])
    for entry in manifest["policies"]:
        version = versions[str(entry["task_id"])]
        adapted = load_policy(saved / entry["folder"]).act(obs, deterministic=True)
        assert not np.allclose(adapted, expected, atol=1e-6)  # adapted, not θ
        out = predicted[f"models:/pointnav-adapted/{version.version}"]
        np.testing.assert_allclose(out["actions"], adapted, atol=1e-6)


def test_register_model_needs_tracking_and_a_valid_name(tmp_path, capsys) -> None:
    assert cli.main(["train", "--family", "PointNav", "--no-mlflow",
                     "--register-model", "x"]) == 2
    assert "--register-model: needs MLflow tracking" in capsys.readouterr().err
    assert cli.main(["adapt", "--checkpoint", str(tmp_path), "--register-model", "a/b"]) == 2
    assert "--register-model" in capsys.readouterr().err
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "rllib_checkpoint.json").write_text("{}")  # passes the up-front check only
    (tmp_path / "file").write_text("")
    assert cli.main(["adapt", "--checkpoint", str(ckpt), "--save",
                     str(tmp_path / "file")]) == 2
    assert "--save: " in capsys.readouterr().err  # before Ray starts: no restore tried
