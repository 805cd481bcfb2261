"""The toy CMDPs and the family/task API they share with the safety-gymnasium families."""
import numpy as np
import pytest

from metacpo_rllib.envs import FAMILIES, Task, make_family
from metacpo_rllib.envs.toy import bandit_optimum

TOY = ["ConstrainedBandit", "PointNav"]


def rollout(env, actions, seed=0):
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, info["cost"])]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, reward, info["cost"]))
        if terminated or truncated:
            break
    return out


def test_families_listed():
    assert set(FAMILIES) == {"PointCircle", "CarCircleHazard", "PointButton",
                             "ConstrainedBandit", "PointNav"}


@pytest.mark.parametrize("name", TOY)
def test_builds_steps_and_reports_cost(name):
    family = make_family(name)
    env = family.make_env()
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert "cost" in info
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.dtype == np.float32
        assert isinstance(reward, float) and info["cost"] in (0.0, 1.0)
        assert info["task_id"] == env.get_task().task_id


@pytest.mark.parametrize("name", TOY)
def test_seeded_sampling_reproduces_and_splits_differ(name):
    family = make_family(name)
    assert family.sample_tasks(5, "train", seed=3) == family.sample_tasks(5, "train", seed=3)
    assert family.sample_tasks(5, "train", seed=3) != family.sample_tasks(5, "train", seed=4)
    train = family.sample_tasks(50, "train", seed=0)
    test = family.sample_tasks(50, "test", seed=0)
    assert {t.cost_limit for t in train} == {10.0} and {t.cost_limit for t in test} == {5.0}
    assert not {t.task_id for t in train} & {t.task_id for t in test}
    key = family.param_keys[-1]
    train_values = np.array([t.params[key] for t in train], dtype=float)
    test_values = np.array([t.params[key] for t in test], dtype=float)
    assert train_values.mean() != pytest.approx(test_values.mean(), abs=1e-3)


@pytest.mark.parametrize("name", TOY)
def test_different_tasks_give_different_episodes(name):
    family = make_family(name)
    a, b = family.sample_tasks(2, "train", seed=0)
    env = family.make_env(a)
    actions = [env.action_space.sample() * 0 + 0.5 for _ in range(20)]
    ep_a = rollout(env, actions)
    env.set_task(b)
    assert env.get_task() == b
    ep_b = rollout(env, actions)
    assert any(not np.allclose(x[0], y[0]) or x[1] != y[1] for x, y in zip(ep_a, ep_b))
    env.set_task(a)
    assert all(np.allclose(x[0], y[0]) and x[1] == y[1] for x, y in zip(ep_a, rollout(env, actions)))


def test_pointnav_hazard_on_the_path_costs_and_moving_it_away_does_not():
    family = make_family("PointNav")
    task = Task("PointNav", {"goal_x": 1.0, "goal_y": 0.0, "hazard_x": 0.5, "hazard_y": 0.0,
                             "hazard_radius": 0.3}, 10.0)
    env = family.make_env(task)
    straight = [np.array([1.0, 0.0], dtype=np.float32)] * 60
    cost_on_path = sum(c for _, _, c in rollout(env, straight))
    env.set_task(Task("PointNav", dict(task.params, hazard_y=1.0), 10.0))
    cost_off_path = sum(c for _, _, c in rollout(env, straight))
    assert cost_on_path >= 10 and cost_off_path == 0


def test_pointnav_hiding_the_layout_leaves_the_position_and_the_same_episode():
    """``observe_layout=False``: the observation is the position alone, and the task's
    rewards and costs are those of the family that shows the layout."""
    task = make_family("PointNav").sample_tasks(1, seed=3)[0]
    actions = [np.array([0.7, -0.2], dtype=np.float32)] * 40
    runs = {}
    for shown in (True, False):
        env = make_family("PointNav", observe_layout=shown).make_env(task)
        obs, _ = env.reset(seed=11)
        assert env.observation_space.shape == obs.shape == ((6,) if shown else (2,))
        steps = rollout(env, actions)
        runs[shown] = [(o[:2].tolist(), r, c) for o, r, c in steps]
    assert runs[True] == runs[False]
    assert sum(abs(r) for _, r, _ in runs[False]) > 0  # the episode moved the goal distance


def test_bandit_optimum_closed_form():
    # budget 0.5 per pull: mix the best (cost 1) and the safe arm (cost 0) half and half
    value, p = bandit_optimum([1.0, 0.2], [1.0, 0.0], cost_limit=10, horizon=20)
    assert p == pytest.approx([0.5, 0.5]) and value == pytest.approx(20 * 0.6)
    value, p = bandit_optimum([1.0, 0.2], [0.1, 0.0], cost_limit=10, horizon=20)
    assert p == pytest.approx([1.0, 0.0]) and value == pytest.approx(20.0)
    assert bandit_optimum([1.0], [1.0], cost_limit=1, horizon=20) == (None, None)


def test_bandit_pulls_follow_the_logits():
    family = make_family("ConstrainedBandit", num_arms=2, horizon=2000)
    env = family.make_env(Task("ConstrainedBandit",
                               {"reward_means": [1.0, 0.0], "cost_means": [1.0, 0.0]}, 10.0))
    out = rollout(env, [np.array([5.0, -5.0], dtype=np.float32)] * 2000)
    assert sum(c for _, _, c in out) > 1950


@pytest.mark.parametrize("bad, field", [
    (dict(name="Nope"), "family"),
    (dict(name="PointNav", train_cost_limit=-1.0), "train_cost_limit"),
    (dict(name="PointNav", horizon=0), "horizon"),
    (dict(name="PointNav", observe_layout="no"), "observe_layout"),
    (dict(name="PointNav", bogus=1), "bogus"),
])
def test_bad_family_arguments_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        make_family(**bad)


def test_bad_tasks_name_the_field():
    family = make_family("PointNav")
    good = family.sample_tasks(1)[0]
    with pytest.raises(ValueError, match="unknown keys"):
        family.make_env(Task("PointNav", dict(good.params, wall=1.0), 10.0))
    with pytest.raises(ValueError, match="hazard_radius"):
        family.make_env(Task("PointNav", dict(good.params, hazard_radius=-0.1), 10.0))
    with pytest.raises(ValueError, match="task.family"):
        family.make_env(make_family("ConstrainedBandit").sample_tasks(1)[0])
    with pytest.raises(ValueError, match="cost_limit"):
        family.make_env(good.with_cost_limit(-1.0))
    with pytest.raises(ValueError, match="cost_limit"):
        family.sample_tasks(2, cost_limit=float("nan"))
    with pytest.raises(ValueError, match="split"):
        family.sample_tasks(2, split="validation")


def test_task_round_trips_through_a_dict():
    task = make_family("ConstrainedBandit").sample_tasks(1, "test", seed=5)[0]
    assert Task.from_dict(task.to_dict()) == task
    with pytest.raises(ValueError, match="unknown keys"):
        Task.from_dict(dict(task.to_dict(), colour="red"))
