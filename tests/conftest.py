"""Shared fixtures: one small local Ray instance per test module that asks for it."""
from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the module: 2 CPUs, its own temp dir, no dashboard; shut down after."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="mcpo-test-ray-", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Shut down a Ray left initialised by an in-process command, before interpreter exit
    (Ray's core worker torn down by the interpreter's exit can crash the process)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
