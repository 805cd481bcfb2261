"""Tests of the safety-gymnasium task families: building, sampling, spaces, task effects, errors."""
from __future__ import annotations

import numpy as np
import pytest

from metacpo_rllib.envs import make_family
from metacpo_rllib.envs.base import Task
from metacpo_rllib.envs.safety import SafetyTaskEnv, make_bare_env

SAFETY = ("PointCircle", "CarCircleHazard", "PointButton")

# The distributions as stated by the paper authors (independent of the families' own tables).
RANGES = {
    "PointCircle": {"train": {"radius": (1.0, 1.5), "factor": (0.55, 0.75)},
                    "test": {"radius": (2.0, 2.5), "factor": (0.55, 0.65)}},
    "CarCircleHazard": {
        "train": {"radius": (1.0, 1.5), "factor": (0.55, 0.75), "num_hazards": {4, 5, 6},
                  "hazard_extent": {1.4}},
        "test": {"radius": (1.5, 2.0), "factor": (0.55, 0.65), "num_hazards": {10, 11, 12},
                 "hazard_extent": {1.8}}},
    "PointButton": {"train": {"extent": (1.75, 2.0), "num_buttons": {3, 4, 5, 6}},
                    "test": {"extent": (2.6, 2.9), "num_buttons": {6, 7, 8, 9, 10}}},
}
EXTRA_HAZARDS = {"train": 3, "test": 6}  # PointButton: num_hazards = num_buttons + extra

# Smallest and largest layouts over both splits (object counts, extents, walls).
EXTREMES = {
    "PointCircle": [dict(radius=1.0, factor=0.55), dict(radius=2.5, factor=0.75)],
    "CarCircleHazard": [dict(radius=1.0, factor=0.55, num_hazards=4, hazard_extent=1.4),
                        dict(radius=2.0, factor=0.75, num_hazards=12, hazard_extent=1.8)],
    "PointButton": [dict(extent=1.75, num_buttons=3, num_hazards=6),
                    dict(extent=2.9, num_buttons=10, num_hazards=16)],
}


def _task(family: str, cost_limit: float = 10.0, task_id: int = 0, **params) -> Task:
    return Task(family, params, cost_limit, task_id=task_id)


def _rollout(env, seed: int, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """(observations, rewards, costs, infos) of ``actions`` from ``reset(seed)``."""
    obs, _ = env.reset(seed=seed)
    observations, rewards, costs, infos = [obs], [], [], []
    for action in actions:
        obs, reward, _, _, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        costs.append(info["cost"])
        infos.append(info)
    return np.array(observations), np.array(rewards), np.array(costs), infos


@pytest.fixture(scope="module")
def envs() -> dict[str, SafetyTaskEnv]:
    return {name: make_family(name).make_env() for name in SAFETY}


def _random_actions(env, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    space = env.action_space
    return rng.uniform(space.low, space.high, (n, *space.shape)).astype(np.float32)


# -- building and stepping ------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAFETY)
def test_family_builds_and_steps(name: str, envs) -> None:
    env = envs[name]
    env.set_task(make_family(name).default_task())
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert info["task_id"] == 0 and info["cost"] == 0.0
    assert env.observation_space.dtype == np.float32 and env.action_space.dtype == np.float32
    for action in _random_actions(env, 30):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.dtype == np.float32 and env.observation_space.contains(obs)
        assert isinstance(reward, float) and isinstance(info["cost"], float)
        assert info["cost"] >= 0.0 and info["task_id"] == 0
        assert not terminated and not truncated


@pytest.mark.parametrize("name", SAFETY)
def test_episode_length_override(name: str) -> None:
    default = make_family(name).max_episode_steps
    assert default == (1000 if name == "PointButton" else 500)
    env = make_family(name, max_episode_steps=4).make_env()
    env.reset(seed=1)
    flags = [env.step(a)[3] for a in _random_actions(env, 4)]
    assert flags == [False, False, False, True]


# -- sampling --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAFETY)
def test_sampling_reproducible_splits_differ_and_in_range(name: str) -> None:
    family = make_family(name)
    train = family.sample_tasks(200, "train", seed=7)
    assert train == family.sample_tasks(200, "train", seed=7)
    assert train != family.sample_tasks(200, "train", seed=8)
    test = family.sample_tasks(200, "test", seed=7)
    assert {t.cost_limit for t in train} == {10.0} and {t.cost_limit for t in test} == {5.0}
    assert not {t.task_id for t in train} & {t.task_id for t in test}
    for split, tasks in (("train", train), ("test", test)):
        for key, spec in RANGES[name][split].items():
            values = [t.params[key] for t in tasks]
            if isinstance(spec, set):  # discrete uniform: every value, nothing else
                assert set(values) == spec, (split, key)
            else:
                assert spec[0] <= min(values) and max(values) <= spec[1], (split, key)
                assert max(values) - min(values) > 0.5 * (spec[1] - spec[0])  # spread out
        if name == "PointButton":
            assert all(t.params["num_hazards"] == t.params["num_buttons"] + EXTRA_HAZARDS[split]
                       for t in tasks)
        for task in tasks[:5]:
            assert family.validate_task(task.to_dict()) == task
    params = lambda tasks: {tuple(sorted(t.params.items())) for t in tasks}  # noqa: E731
    assert not params(train) & params(test)


# -- spaces ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAFETY)
def test_spaces_identical_across_extreme_tasks(name: str) -> None:
    family = make_family(name)
    small, large = (family.make_env(_task(name, **p)) for p in EXTREMES[name])
    assert small.observation_space == large.observation_space
    assert small.action_space == large.action_space
    shapes = set()
    for env in (small, large):
        for seed in range(2):
            obs, _ = env.reset(seed=seed)
            assert env.observation_space.contains(obs)
            shapes.add(obs.shape)
    # the same env switched between the extremes keeps its spaces and valid observations
    small.set_task(_task(name, **EXTREMES[name][1]))
    obs, _ = small.reset(seed=3)
    assert small.observation_space.contains(obs) and shapes == {obs.shape}


# -- tasks take real effect ----------------------------------------------------------------------
def _first_cost_step(costs: np.ndarray) -> int | None:
    hits = np.flatnonzero(costs > 0)
    return int(hits[0]) if hits.size else None


def test_walls_move_when_cost_is_incurred(envs) -> None:
    env = envs["PointCircle"]
    forward = np.tile(np.array([1.0, 0.0], np.float32), (100, 1))
    firsts = []
    for factor in (0.4, 0.8):  # walls at |x| = 0.6 and 1.2
        env.set_task(_task("PointCircle", radius=1.5, factor=factor))
        obs, rewards, costs, _ = _rollout(env, 0, forward)
        firsts.append(_first_cost_step(costs))
        walls = [env.sim_task.data.body(f"sigwall{i}").xpos[0] for i in range(2)]
        assert sorted(walls) == pytest.approx([-1.5 * factor, 1.5 * factor])
    assert firsts[0] is not None and firsts[1] is not None and firsts[0] < firsts[1]


def test_radius_changes_reward(envs) -> None:
    env = envs["PointCircle"]
    actions = _random_actions(env, 120, seed=1)
    runs = []
    for radius, factor in ((1.5, 0.4), (1.2, 0.5)):  # same walls (0.6), different circle
        env.set_task(_task("PointCircle", radius=radius, factor=factor))
        runs.append(_rollout(env, 1, actions))
        assert env.sim_task.model.geom("circle").size[0] == pytest.approx(radius)
    (obs_a, rew_a, cost_a, _), (obs_b, rew_b, cost_b, _) = runs
    assert np.array_equal(obs_a, obs_b) and np.array_equal(cost_a, cost_b)  # same motion
    assert not np.allclose(rew_a, rew_b)


def _bodies(env: SafetyTaskEnv, prefix: str) -> int:
    model = env.sim_task.model
    return sum(model.body(i).name.startswith(prefix) for i in range(model.nbody))


def test_more_hazards_change_the_cost(envs) -> None:
    env = envs["CarCircleHazard"]
    forward = np.tile(np.array([1.0, 1.0], np.float32), (150, 1))
    hazard_steps = {}
    for num in (1, 12):
        env.set_task(_task("CarCircleHazard", radius=2.0, factor=0.9, num_hazards=num,
                           hazard_extent=1.8))
        total = 0
        for seed in range(6):
            _, _, _, infos = _rollout(env, seed, forward)
            total += sum(info["cost_hazards"] > 0 for info in infos)
            assert _bodies(env, "hazard") == num
        hazard_steps[num] = total
    assert hazard_steps[12] > hazard_steps[1]


def test_button_counts_and_extent_take_effect(envs) -> None:
    env = envs["PointButton"]
    for params in EXTREMES["PointButton"]:
        env.set_task(_task("PointButton", **params))
        env.reset(seed=0)
        assert _bodies(env, "button") == params["num_buttons"]
        assert _bodies(env, "hazard") == params["num_hazards"]
        xy = np.array([env.sim_task.data.body(f"hazard{i}").xpos[:2]
                       for i in range(params["num_hazards"])])
        assert np.abs(xy).max() <= params["extent"]


@pytest.mark.parametrize("name", SAFETY)
def test_two_tasks_give_different_episodes(name: str, envs) -> None:
    env = envs[name]
    actions = _random_actions(env, 100, seed=2)
    runs = []
    for task in make_family(name).sample_tasks(2, "train", seed=3):
        env.set_task(task)
        obs, rewards, costs, infos = _rollout(env, 5, actions)
        assert {info["task_id"] for info in infos} == {task.task_id}
        runs.append(np.concatenate([obs[1:].ravel(), rewards, costs]))
    assert not np.allclose(runs[0], runs[1])


def test_task_takes_effect_at_next_reset(envs) -> None:
    env = envs["PointCircle"]
    old, new = (_task("PointCircle", task_id=i, radius=r, factor=0.6)
                for i, r in ((1, 1.1), (2, 2.2)))
    env.set_task(old)
    env.reset(seed=0)
    sim = env.sim_task
    env.set_task(new)
    assert env.get_task() == new
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["task_id"] == 1 and sim.model.geom("circle").size[0] == pytest.approx(1.1)
    _, info = env.reset(seed=0)
    assert info["task_id"] == 2 and sim.model.geom("circle").size[0] == pytest.approx(2.2)
    assert env.sim_task is sim  # the task object is reused, not rebuilt


def test_layer_matches_bare_safety_gymnasium() -> None:
    """The task layer (with its lean world) steps exactly like the bare Builder."""
    task = _task("PointCircle", radius=1.3, factor=0.6)
    env = make_family("PointCircle").make_env(task)
    bare = make_bare_env("PointCircle", task)  # stock World, HD skybox
    actions = _random_actions(env, 60, seed=4)
    obs, rewards, costs, _ = _rollout(env, 9, actions)
    bare_obs = [bare.reset(seed=9)[0]]
    bare_out = [bare.step(a.astype(np.float64)) for a in actions]
    bare_obs += [out[0] for out in bare_out]
    assert np.array_equal(obs, np.array(bare_obs, dtype=np.float32))
    assert np.array_equal(rewards, [out[1] for out in bare_out])
    assert np.array_equal(costs, [out[2] for out in bare_out])


# -- bad input ------------------------------------------------------------------------------------
BAD_PARAMS = [
    ("PointCircle", dict(radius=0.0, factor=0.6), "radius"),
    ("PointCircle", dict(radius=-1.0, factor=0.6), "radius"),
    ("PointCircle", dict(radius=1.2, factor=0.0), "factor"),
    ("PointCircle", dict(radius=1.2, factor=1.0), "factor"),
    ("PointCircle", dict(radius=1.2, factor=1.5), "factor"),
    ("PointCircle", dict(radius=1.2, factor=-0.2), "factor"),
    ("PointCircle", dict(radius="big", factor=0.6), "radius"),
    ("PointCircle", dict(radius=0.3, factor=0.6), "factor"),  # walls inside the start square
    ("CarCircleHazard", dict(radius=0.0, factor=0.6, num_hazards=4, hazard_extent=1.4), "radius"),
    ("CarCircleHazard", dict(radius=1.2, factor=1.2, num_hazards=4, hazard_extent=1.4), "factor"),
    ("CarCircleHazard", dict(radius=1.2, factor=0.6, num_hazards=0, hazard_extent=1.4),
     "num_hazards"),
    ("CarCircleHazard", dict(radius=1.2, factor=0.6, num_hazards=4.5, hazard_extent=1.4),
     "num_hazards"),
    ("CarCircleHazard", dict(radius=1.2, factor=0.6, num_hazards=True, hazard_extent=1.4),
     "num_hazards"),
    ("CarCircleHazard", dict(radius=1.2, factor=0.6, num_hazards=4, hazard_extent=0.2),
     "hazard_extent"),
    ("PointButton", dict(extent=0.5, num_buttons=3, num_hazards=6), "extent"),
    ("PointButton", dict(extent=9.0, num_buttons=3, num_hazards=6), "extent"),
    ("PointButton", dict(extent=2.0, num_buttons=0, num_hazards=6), "num_buttons"),
    ("PointButton", dict(extent=2.0, num_buttons=3, num_hazards=-1), "num_hazards"),
    ("PointButton", dict(extent=2.0, num_buttons=99, num_hazards=6), "num_buttons"),
]


@pytest.mark.parametrize("name,params,field", BAD_PARAMS)
def test_bad_params_name_the_field(name: str, params: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"task\.params\.{field}\b"):
        make_family(name).validate_task(_task(name, **params))


def test_button_boundary_changes_only_the_cost() -> None:
    """With ``boundary`` a step ending beyond extent + margin costs 1 more; observations,
    rewards, layouts and the other costs are those of the family without it, bit for bit."""
    task = _task("PointButton", extent=1.75, num_buttons=3, num_hazards=6)
    actions = np.tile(np.array([1.0, 0.05], np.float32), (300, 1))  # drives off the layout
    plain = _rollout(make_family("PointButton").make_env(task), 3, actions)
    fenced = make_family("PointButton", boundary=0.2).make_env(task)
    obs, rewards, costs, infos = _rollout(fenced, 3, actions)
    assert obs.tobytes() == plain[0].tobytes() and rewards.tobytes() == plain[1].tobytes()
    outside = np.array([i["cost_out_of_boundary"] for i in infos])
    assert 0 < outside.sum() < len(actions)  # starts inside the square, leaves it
    np.testing.assert_array_equal(costs, plain[2] + outside)
    assert "cost_out_of_boundary" not in plain[3][0]
    x, y = fenced.sim_task.agent.pos[:2]
    assert outside[-1] == float(max(abs(x), abs(y)) > 1.95)
    for bad in ("wide", -0.1, True, float("inf")):
        with pytest.raises(ValueError, match="boundary"):
            make_family("PointButton", boundary=bad)


def test_bad_tasks_and_overrides(envs) -> None:
    family = make_family("PointCircle")
    good = family.default_task()
    with pytest.raises(ValueError, match=r"unknown keys \['radius_x'\]"):
        family.validate_task(_task("PointCircle", radius=1.2, factor=0.6, radius_x=1.0))
    with pytest.raises(ValueError, match=r"missing keys \['factor'\]"):
        family.validate_task(_task("PointCircle", radius=1.2))
    with pytest.raises(ValueError, match="unknown keys"):
        family.validate_task({**good.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match=r"task\.family"):
        family.validate_task(make_family("PointButton").default_task())
    with pytest.raises(ValueError, match=r"task\.cost_limit"):
        family.validate_task(good.with_cost_limit(-1.0))
    with pytest.raises(ValueError, match="train_cost_limit"):
        make_family("CarCircleHazard", train_cost_limit=-1)
    with pytest.raises(ValueError, match="test_cost_limit"):
        make_family("PointButton", test_cost_limit=float("nan"))
    with pytest.raises(ValueError, match="cost_limit"):
        family.sample_tasks(2, cost_limit=-0.5)
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_family("PointCircle", max_episode_steps=0)
    with pytest.raises(ValueError, match="hazard_keepout"):
        make_family("CarCircleHazard", hazard_keepout=-0.1)
    with pytest.raises(ValueError, match="invalid override"):
        make_family("PointCircle", num_walls=4)
    # a rejected task leaves the env's task untouched
    env = envs["PointCircle"]
    env.set_task(good)
    with pytest.raises(ValueError, match=r"task\.params\.radius"):
        env.set_task(_task("PointCircle", radius=-2.0, factor=0.6))
    assert env.get_task() == good


@pytest.mark.parametrize("name", ["PointCircle", "PointButton"])
def test_observe_cost_appends_the_last_step_cost(name: str) -> None:
    """With ``observe_cost`` the observation gains one last input, the cost of the step that
    led to it (0 after a reset); everything else is the family's own, bit for bit."""
    task = make_family(name).default_task()
    actions = np.tile(np.array([1.0, 0.05], np.float32), (300, 1))  # drives into a wall
    plain = _rollout(make_family(name).make_env(task), 3, actions)
    env = make_family(name, observe_cost=True).make_env(task)
    obs, rewards, costs, _ = _rollout(env, 3, actions)
    assert env.observation_space.shape == (plain[0].shape[1] + 1,)
    assert env.observation_space.contains(obs[0]) and obs.dtype == np.float32
    assert obs[:, :-1].tobytes() == plain[0].tobytes() and rewards.tobytes() == plain[1].tobytes()
    np.testing.assert_array_equal(costs, plain[2])
    assert costs.sum() > 0  # the cost input is seen to change
    np.testing.assert_array_equal(obs[:, -1], np.concatenate([[0.0], costs]))
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="observe_cost"):
            make_family(name, observe_cost=bad)
