"""Tests of the safety-gymnasium compatibility shims (metacpo_rllib.envs.compat)."""
from __future__ import annotations

import subprocess
import sys
import types
from unittest import mock

import numpy as np
import pytest

from metacpo_rllib.envs import compat

FRESH_IMPORT = """
import sys
import metacpo_rllib.envs.compat as c
c.apply(); c.apply()
import safety_gymnasium
c.apply()
from safety_gymnasium.assets.color import COLOR
from safety_gymnasium.builder import Builder
env = safety_gymnasium.make("SafetyCarCircle1-v0")  # Car: needs the numpy>=2.4 joint fix
obs, info = env.reset(seed=0)
out = env.step(env.action_space.sample())
assert len(out) == 6, out
assert obs.shape == env.observation_space.shape
assert sum(isinstance(f, c._SafetyGymnasiumFinder) for f in sys.meta_path) == 1
print("OK", type(COLOR["hazard"]).__name__, env.spec.max_episode_steps)
"""


def test_fresh_process_import_make_and_step() -> None:
    """apply() in a fresh interpreter lets safety_gymnasium import, make and step (a-e)."""
    proc = subprocess.run([sys.executable, "-c", FRESH_IMPORT], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["OK", "HashableArray", "500"]


def test_apply_is_idempotent() -> None:
    compat.apply()
    finders = sum(isinstance(f, compat._SafetyGymnasiumFinder) for f in sys.meta_path)
    import safety_gymnasium
    from safety_gymnasium.bases import base_agent, underlying

    make, jnt, viewer = (safety_gymnasium.make, base_agent.BaseAgent._init_jnt_sensors,
                         underlying.OffScreenViewer)
    for _ in range(3):
        compat.apply()
    assert compat.is_applied()
    assert sum(isinstance(f, compat._SafetyGymnasiumFinder) for f in sys.meta_path) == finders == 1
    # patched callables are not wrapped again
    assert safety_gymnasium.make is make
    assert base_agent.BaseAgent._init_jnt_sensors is jnt
    assert underlying.OffScreenViewer is viewer


def test_legacy_gymnasium_wrapper_modules() -> None:
    compat.apply()
    import gymnasium.wrappers as w
    from gymnasium.wrappers.autoreset import AutoResetWrapper
    from gymnasium.wrappers.compatibility import EnvCompatibility
    from gymnasium.wrappers.normalize import RunningMeanStd
    from gymnasium.wrappers.time_limit import TimeLimit

    assert AutoResetWrapper is w.Autoreset and TimeLimit is w.TimeLimit
    assert RunningMeanStd(shape=()).var == 1.0
    with pytest.raises(NotImplementedError, match="shimmy"):
        EnvCompatibility(None)


def test_hashable_colors_are_read_only() -> None:
    compat.apply()
    from safety_gymnasium.assets.color import COLOR
    from safety_gymnasium.assets.geoms import Hazards

    color = COLOR["hazard"]
    assert isinstance(color, compat.HashableArray) and hash(color) == id(color)
    assert not color.flags.writeable
    assert np.allclose(Hazards().color, [0, 0, 1, 0.25])
    assert np.allclose(color * [1, 1, 1, 0.1], [0, 0, 1, 0.025])  # arithmetic still works


def test_multi_agent_stub() -> None:
    compat.apply()
    import safety_gymnasium

    if compat._has_gymnasium_robotics():
        pytest.skip("gymnasium-robotics installed: the real multi-agent module is used")
    with pytest.raises(ImportError, match="gymnasium-robotics"):
        safety_gymnasium.make_ma("Ant", "2x4")


def test_make_rejects_removed_options() -> None:
    compat.apply()
    import safety_gymnasium

    with pytest.raises(ValueError, match="autoreset"):
        safety_gymnasium.make("SafetyPointCircle1-v0", autoreset=True)


def test_jnt_proxy_takes_one_element_arrays() -> None:
    seen = []
    model = types.SimpleNamespace(jnt=lambda key: seen.append(key) or key, nsensor=3)
    proxy = compat._JntIndexModel(model)
    assert proxy.jnt(np.array([3])) == 3 and type(seen[-1]) is int
    assert proxy.jnt("name") == "name" and proxy.nsensor == 3


def test_offscreen_viewer_gets_size_from_model() -> None:
    compat.apply()
    from gymnasium.envs.mujoco import mujoco_rendering
    from safety_gymnasium.bases import underlying

    model = types.SimpleNamespace(vis=types.SimpleNamespace(
        global_=types.SimpleNamespace(offwidth=64, offheight=48)))
    with mock.patch.object(mujoco_rendering, "OffScreenViewer") as viewer:
        underlying.OffScreenViewer(model, "data")
        underlying.OffScreenViewer(model, "data", 32, 16)
    assert [c.args for c in viewer.call_args_list] == [(model, "data", 64, 48),
                                                       (model, "data", 32, 16)]
