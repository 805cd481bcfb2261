"""``metacpo_rllib.load_policy``: θ out of a real algorithm checkpoint (and an RLModule
checkpoint), acting in a process that never imports Ray."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]

ACT = """
import json, sys
import numpy as np
import metacpo_rllib

obs = np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
policy = metacpo_rllib.load_policy(sys.argv[1], seed=0)
out = {
    "mean": policy.act(obs, deterministic=True).tolist(),
    "one": policy.act(obs[0], deterministic=True).tolist(),
    "samples": policy.act(np.repeat(obs[:1], 4000, axis=0)).tolist(),
    "low": policy.action_space.low.tolist(), "high": policy.action_space.high.tolist(),
    "ray_imported": any(m == "ray" or m.startswith("ray.") for m in sys.modules),
}
print(json.dumps(out))
"""


def _numpy_policy_mean(weights: dict, obs: np.ndarray) -> np.ndarray:
    """The Gaussian MLP's mean, written out in numpy (tanh hidden layers)."""
    h = obs.astype(np.float64)
    i = 0
    while f"pi.body.{i}.weight" in weights:
        h = np.tanh(h @ np.asarray(weights[f"pi.body.{i}.weight"]).T
                    + np.asarray(weights[f"pi.body.{i}.bias"]))
        i += 2
    return h @ np.asarray(weights["pi.mean.weight"]).T + np.asarray(weights["pi.mean.bias"])


def _act(path: Path, obs: np.ndarray) -> dict:
    proc = subprocess.run([sys.executable, "-c", ACT, str(path), json.dumps(obs.tolist())],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_load_policy_acts_like_the_trained_module(tmp_path, ray_local) -> None:
    from metacpo_rllib import MetaCPOConfig

    config = (MetaCPOConfig().environment("ConstrainedBandit")
              .training(tasks_per_iteration=2, episodes_per_task=2, seed=0))
    algo = config.build_algo()
    try:
        algo.train()
        ckpt = Path(algo.save_to_path(str(tmp_path / "ckpt")))
        weights = algo.learner_group.get_weights()["default_policy"]
        module_dir = tmp_path / "module"
        algo.get_module("default_policy").save_to_path(str(module_dir))
        space = algo.get_module("default_policy").action_space
        obs_dim = int(np.prod(algo.get_module("default_policy").observation_space.shape))
    finally:
        algo.stop()

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, obs_dim)).astype(np.float32) * 3
    expected = np.clip(_numpy_policy_mean(weights, obs), space.low, space.high)
    for path in (ckpt, module_dir):
        out = _act(path, obs)
        assert not out["ray_imported"]
        np.testing.assert_allclose(out["mean"], expected, atol=1e-5)
        np.testing.assert_allclose(out["one"], expected[0], atol=1e-5)
        assert out["low"] == space.low.tolist() and out["high"] == space.high.tolist()
        samples = np.asarray(out["samples"])
        assert samples.shape == (4000, space.shape[0])
        assert (samples >= space.low).all() and (samples <= space.high).all()
        # sampled actions are mean + exp(log_std) * N(0, 1), then clipped; the quartiles
        # lie inside the bounds here, so median and interquartile range are the Gaussian's
        std = np.exp(np.asarray(weights["pi.log_std"], dtype=np.float64))
        q1, median, q3 = np.quantile(samples, [0.25, 0.5, 0.75], axis=0)
        assert ((expected[0] - std) > space.low).all() and ((expected[0] + std) < space.high).all()
        np.testing.assert_allclose(median, expected[0], atol=0.1 * std.max())
        np.testing.assert_allclose(q3 - q1, 1.349 * std, rtol=0.1)


def test_load_policy_names_what_is_missing(tmp_path) -> None:
    from metacpo_rllib import load_policy

    with pytest.raises(FileNotFoundError, match="path: .*no such"):
        load_policy(tmp_path / "no such")
    with pytest.raises(FileNotFoundError, match="no policy weights"):
        load_policy(tmp_path)
