"""Reliability: checkpoint / restore reproduces the uninterrupted run; a failed checkpoint
(unwritable directory, full disk) raises a clear error and leaves training intact."""
from __future__ import annotations

import errno
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from metacpo_rllib.rllib import CPOConfig, MetaCPOConfig
from metacpo_rllib.rllib.algorithm import CheckpointError
from helpers import theta

pytestmark = pytest.mark.ray

#: Result entries that legitimately differ between two runs (wall-clock time).
TIMING = ("time",)


def make_config(cls=MetaCPOConfig):
    return (cls().environment("PointNav", env_config={"horizon": 20})
            .env_runners(num_env_runners=0)
            .training(tasks_per_iteration=2, episodes_per_task=2, seed=7))


def comparable(metrics: dict, prefix: tuple = ()) -> dict:
    """The metrics as {key path: value}, without wall-clock timings."""
    out = {}
    for key, value in metrics.items():
        if prefix + (key,) == TIMING:
            continue
        if isinstance(value, dict):
            out.update(comparable(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def assert_same_metrics(a: dict, b: dict) -> None:
    a, b = comparable(a), comparable(b)
    assert set(a) == set(b)
    for key in a:
        if key[-1] == "node_id":  # Ray node ids (strings): same single node
            assert a[key] == b[key], key
            continue
        x, y = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True,
                                   err_msg=str(key))


@pytest.mark.parametrize("cls", [MetaCPOConfig, CPOConfig], ids=["MetaCPO", "CPO"])
def test_restore_then_train_matches_the_uninterrupted_run(ray_local, tmp_path, cls):
    from ray.rllib.algorithms.algorithm import Algorithm

    n = 2
    algo = make_config(cls).build_algo()
    try:
        for _ in range(n):
            algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        reference = algo.train()["metacpo"]
        reference_theta = theta(algo)
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        resumed = restored.train()["metacpo"]
        assert resumed["meta_iteration"] == n + 1
        assert_same_metrics(reference, resumed)
        for key, value in theta(restored).items():
            np.testing.assert_allclose(value, reference_theta[key], rtol=1e-5, atol=1e-7)
    finally:
        restored.stop()


def _check_failed_save(algo, path: Path, match: str) -> None:
    before, iteration = theta(algo), algo.iteration
    with pytest.raises(CheckpointError, match=match) as info:
        algo.save_to_path(str(path))
    assert str(path) in str(info.value) and "unchanged" in str(info.value)
    assert not path.exists() or not any(path.iterdir())  # nothing half-written left
    assert algo.iteration == iteration
    for key, value in theta(algo).items():
        np.testing.assert_array_equal(value, before[key])


def test_unwritable_or_full_checkpoint_dir_is_a_clear_error(ray_local, tmp_path, monkeypatch):
    """Three failures: a path under a regular file, a write that fails with ENOSPC (as
    on a full disk) and, where the test may mount one, a real 64 KiB tmpfs. Afterwards
    training goes on from the same θ and a checkpoint to a good path works."""
    import ray.cloudpickle

    algo = make_config().build_algo()
    try:
        algo.train()
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        _check_failed_save(algo, blocker / "ckpt", "Not a directory|not a directory")

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(ray.cloudpickle, "dump", no_space)
            _check_failed_save(algo, tmp_path / "full", "No space left")

        mount = tmp_path / "tiny"
        mount.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                  str(mount)], capture_output=True).returncode == 0
        try:
            if mounted:
                _check_failed_save(algo, mount / "ckpt", "No space left")
        finally:
            if mounted:
                subprocess.run(["umount", str(mount)], check=False)

        before = theta(algo)
        results = algo.train()
        assert results["metacpo"]["meta_iteration"] == 2
        assert all(math.isfinite(float(v)) for v in comparable(results["metacpo"]).values()
                   if not isinstance(v, list))
        assert any(not np.array_equal(v, before[k]) for k, v in theta(algo).items()) \
            or not results["metacpo"]["update"]["line_search_accepted"]
        assert Path(algo.save_to_path(str(tmp_path / "good"))).is_dir()
    finally:
        algo.stop()
