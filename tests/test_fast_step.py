"""The fast step of the safety families equals safety-gymnasium's stock step, bitwise.

Two envs of each family, ``fast_step=True`` and ``fast_step=False``, get the same seeds and
the same actions: random actions, and actions driven (from the env's own state) at the
walls, a hazard, the goal button and wrong buttons, so that every cost type, goal
resamples and resets occur. Observations, rewards, costs, terminations and infos must be
equal bit for bit; the test also checks that each event it is meant to cover happened.
"""
from __future__ import annotations

import numpy as np
import pytest

from metacpo_rllib.envs import make_family
from metacpo_rllib.envs.fast_step import FastStep, UnsupportedTask, ego_rounding

STEPS = 240  # episode length of these envs (several resets per run)


def _steer(env, target: np.ndarray, agent: str) -> np.ndarray:
    """An action turning the agent towards ``target`` (xy) and driving there."""
    task = env.sim_task
    body = task.model.body("agent").id
    pos, mat = task.data.xpos[body], task.data.xmat[body].reshape(3, 3)
    ego = np.array([target[0] - pos[0], target[1] - pos[1], 0.0]) @ mat
    err = float(np.arctan2(ego[1], ego[0]))
    fwd = 1.0 if abs(err) < 0.6 else 0.2
    action = [fwd, 2.0 * err] if agent == "Point" else [fwd + err, fwd - err]
    return np.clip(action, -1.0, 1.0).astype(np.float32)


def _target(env, name: str, t: int) -> np.ndarray:
    """Where a driven episode goes at step t: walls and hazards, or goal and wrong buttons."""
    task = env.sim_task
    xpos = lambda body: task.data.xpos[task.model.body(body).id][:2]  # noqa: E731
    phase = t // 40
    if name == "PointButton":
        buttons = task.buttons
        if t < STEPS - 140:
            return xpos(f"button{buttons.goal_button}")
        if t < STEPS - 80:
            return xpos(f"button{(buttons.goal_button + 1) % buttons.num}")
        return xpos("hazard0")
    if name == "CarCircleHazard" and phase % 2 == 0:
        return xpos("hazard0")
    return np.array([3.0 if phase % 4 < 2 else -3.0, 0.5])


def _run(name: str, fast: bool, seed: int, episodes: int = 6) -> list:
    """Every output of ``episodes`` episodes: odd ones random, even ones driven."""
    family = make_family(name, fast_step=fast, max_episode_steps=STEPS)
    env = family.make_env(family.sample_tasks(1, "train", seed=seed)[0])
    rng = np.random.default_rng(seed)
    out = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        out.append((obs, info))
        done, t = False, 0
        while not done:
            if episode % 2:
                action = rng.uniform(-1.0, 1.0, 2).astype(np.float32)
            else:
                action = _steer(env, _target(env, name, t), family.agent)
            obs, reward, terminated, truncated, info = env.step(action)
            out.append((obs, reward, terminated, truncated, info))
            done, t = terminated or truncated, t + 1
    return out


def _events(outputs: list) -> dict[str, float]:
    totals: dict[str, float] = {}
    for item in outputs:
        for key, value in item[-1].items():
            if key.startswith("cost_") or key == "goal_met":
                totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def _assert_identical(stock: list, fast: list) -> None:
    assert len(stock) == len(fast)
    for i, (a, b) in enumerate(zip(stock, fast)):
        assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape, i
        assert a[0].tobytes() == b[0].tobytes(), f"observation {i}"
        for x, y in zip(a[1:-1], b[1:-1]):
            assert type(x) is type(y) and x == y, f"output {i}: {x!r} != {y!r}"
        assert a[-1].keys() == b[-1].keys(), f"info keys {i}"
        for key in a[-1]:
            assert repr(a[-1][key]) == repr(b[-1][key]), f"info[{key!r}] {i}"


# Seeds whose driven episodes reach every event (the runs are deterministic).
@pytest.mark.parametrize("name, seed, events", [
    ("PointCircle", 9, ("cost_out_of_boundary",)),
    ("CarCircleHazard", 7, ("cost_out_of_boundary", "cost_hazards")),
    ("PointButton", 9, ("cost_buttons", "cost_hazards", "goal_met")),
])
def test_fast_step_equals_the_stock_step_bitwise(name: str, seed: int,
                                                 events: tuple[str, ...]) -> None:
    stock, fast = _run(name, False, seed), _run(name, True, seed)
    totals = _events(stock)
    for event in events:  # the episodes reached what they are meant to cover
        assert totals.get(event, 0.0) > 0, (event, totals)
    _assert_identical(stock, fast)


def test_fast_step_is_the_default_and_the_stock_step_stays_selectable() -> None:
    assert make_family("PointCircle").fast_step is True
    env = make_family("PointCircle", fast_step=False).make_env()
    assert env._sg._fast is None  # pylint: disable=protected-access
    with pytest.raises(ValueError, match="fast_step"):
        make_family("PointCircle", fast_step="yes")


@pytest.mark.parametrize("conf, field, value, why", [
    ("lidar_conf", "type", "natural", "natural lidar"),
    ("cost_conf", "constrain_indicator", False, "shaped"),
])
def test_fast_step_refuses_tasks_it_does_not_reproduce(conf: str, field: str, value,
                                                       why: str) -> None:
    env = make_family("PointCircle", fast_step=False).make_env()
    setattr(getattr(env.sim_task, conf), field, value)
    with pytest.raises(UnsupportedTask, match=why):
        FastStep(env._sg)  # pylint: disable=protected-access


def test_contact_lists_iterate_without_an_index_error() -> None:
    """compat (g): MuJoCo 3 contact lists get ``__iter__``; iteration sees every contact."""
    env = make_family("PointButton").make_env()
    env.reset(seed=1)
    data = env.sim_task.data
    assert "__iter__" in vars(type(data.contact))
    for _ in range(60):
        env.step(np.array([1.0, 0.0], dtype=np.float32))
    contacts = list(data.contact[: data.ncon])
    assert len(contacts) == data.ncon
    assert [c.geom1 for c in contacts] == list(data.contact.geom[: data.ncon, 0])


@pytest.mark.parametrize("max_dist", [6.0, None])
def test_builder_step_takes_float32_actions_as_the_stock_step_does(max_dist) -> None:
    """Builder-level steps with float32 actions (the stock clip casts them to float64), with
    the lidar reading linear in distance and (no ``max_dist``) exponential."""
    envs = [make_family("PointCircle", fast_step=fast).make_env() for fast in (False, True)]
    for env in envs:
        env.sim_task.lidar_conf.max_dist = max_dist
        env.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(30):
        action = rng.uniform(-2.0, 2.0, 2).astype(np.float32)  # beyond the ctrl range too
        stock, fast = (env._sg.step(action) for env in envs)  # pylint: disable=protected-access
        assert stock[0].tobytes() == fast[0].tobytes()
        assert stock[1:5] == fast[1:5] and stock[5] == fast[5]


def test_the_ego_rounding_is_numpys_on_this_machine_and_the_other_one_is_not() -> None:
    """The probe finds how numpy rounds ``(3,) @ (3, 3)`` here, and the roundings it chooses
    from differ: the other one misses numpy on some of a thousand random products."""
    from metacpo_rllib.envs import fast_kernel  # pylint: disable=import-outside-toplevel
    rounding = ego_rounding()
    assert rounding in fast_kernel.EGO_ROUNDINGS
    rng = np.random.default_rng(7)
    misses = dict.fromkeys(fast_kernel.EGO_ROUNDINGS, 0)
    for _ in range(1000):
        world, mat = rng.normal(size=3), rng.normal(size=9)
        expected = (world @ mat.reshape(3, 3))[:2]
        for other in misses:
            got = [fast_kernel.ego_column(*world, mat, j, other) for j in (0, 1)]
            misses[other] += not np.array_equal(expected, got)
    assert misses[rounding] == 0 and all(misses[r] > 0 for r in misses if r != rounding), misses


def test_a_machine_whose_numpy_rounds_otherwise_takes_the_stock_step(monkeypatch) -> None:
    """Where the probe finds no rounding of the kernel's (here: made to find none), the env
    warns and steps with the stock step rather than with outputs that are not the stock's."""
    monkeypatch.setattr("metacpo_rllib.envs.fast_step.ego_rounding", lambda: None)
    with pytest.warns(RuntimeWarning, match="taking the stock step"):
        env = make_family("PointCircle").make_env()
    assert env._sg._fast is None  # pylint: disable=protected-access
    env.reset(seed=0)
    assert np.isfinite(env.step(np.zeros(2, dtype=np.float32))[0]).all()
