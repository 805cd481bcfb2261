"""Two tiny pure-numpy CMDPs with the task API: a constrained bandit and a 2-D point navigation."""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from metacpo_rllib.envs.base import TIGHT_SPLIT, Task, TaskEnv, TaskFamily, check_range


class _ToyEnv(TaskEnv):
    """Shared start of the toy envs' episodes (task plumbing in TaskEnv)."""

    def __init__(self, family: TaskFamily) -> None:
        self.family = family

    def _start_episode(self, seed: int | None) -> None:
        super().reset(seed=seed)
        self._apply_pending_task()


# --------------------------------------------------------------------------------------
class ConstrainedBanditEnv(_ToyEnv):
    """A k-armed bandit pulled ``horizon`` times per episode.

    The action is a vector of k logits; the arm is drawn from softmax(action). Pulling arm j
    gives reward ~ N(reward_means[j], 0.1) and cost ~ Bernoulli(cost_means[j]) (0/1 per
    step, like safety-gymnasium). Observation: [fraction of the episode elapsed].
    """

    def __init__(self, family: "ConstrainedBanditFamily") -> None:
        super().__init__(family)
        self.horizon = family.horizon
        k = family.num_arms
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-5.0, 5.0, (k,), np.float32)
        self._t = 0

    def _configure(self, params: Mapping[str, Any]) -> None:
        self._r = np.asarray(params["reward_means"], dtype=np.float64)
        self._c = np.asarray(params["cost_means"], dtype=np.float64)

    def _obs(self) -> np.ndarray:
        return np.array([self._t / self.horizon], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start_episode(seed)
        self._t = 0
        return self._obs(), {"cost": 0.0, "task_id": self._task.task_id}

    def step(self, action):
        logits = np.clip(np.asarray(action, dtype=np.float64), -5.0, 5.0)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        arm = int(self.np_random.choice(len(probs), p=probs))
        reward = float(self._r[arm] + 0.1 * self.np_random.standard_normal())
        cost = float(self.np_random.random() < self._c[arm])
        self._t += 1
        truncated = self._t >= self.horizon
        return self._obs(), reward, False, truncated, {
            "cost": cost, "task_id": self._task.task_id, "arm": arm}


def bandit_optimum(reward_means, cost_means, cost_limit: float, horizon: int):
    """Closed-form constrained optimum: max_p T·p·r s.t. T·p·c ≤ h, p in the simplex.

    An LP over the simplex with one constraint has an optimal vertex on at most two arms,
    so it is found by checking every single arm and every pair on the constraint line.
    Returns (expected episode return, arm probabilities), or (None, None) if infeasible.
    """
    r = np.asarray(reward_means, dtype=np.float64)
    c = np.asarray(cost_means, dtype=np.float64)
    budget = cost_limit / horizon
    best, best_p = None, None
    for i in range(len(r)):
        if c[i] <= budget and (best is None or r[i] > best):
            best, best_p = r[i], np.eye(len(r))[i]
    for i, j in itertools.permutations(range(len(r)), 2):
        if c[i] > budget >= c[j]:
            w = (budget - c[j]) / (c[i] - c[j])
            value = w * r[i] + (1 - w) * r[j]
            if best is None or value > best:
                p = np.zeros(len(r))
                p[i], p[j] = w, 1 - w
                best, best_p = value, p
    if best is None:
        return None, None
    return float(best * horizon), best_p


class ConstrainedBanditFamily(TaskFamily):
    """Bandit tasks: per-arm reward and cost means. Train: reward U(0, 1), cost U(0, 1);
    test: reward U(0, 1), cost U(0.3, 1) (riskier arms). Arm 0 always has cost U(0, 0.2),
    so every task is feasible at the default limits."""

    name = "ConstrainedBandit"
    param_keys = ("reward_means", "cost_means")

    def __init__(self, num_arms: int = 4, horizon: int = 20, **limits: float) -> None:
        super().__init__(**limits)
        if not isinstance(num_arms, int) or num_arms < 2:
            raise ValueError(f"num_arms: expected an integer >= 2, got {num_arms!r}")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon: expected an integer >= 1, got {horizon!r}")
        self.num_arms, self.horizon = num_arms, horizon

    def _sample_params(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        low = 0.0 if split == "train" else 0.3
        cost = rng.uniform(low, 1.0, self.num_arms)
        cost[0] = rng.uniform(0.0, 0.2)  # one safe arm: every task is feasible
        return {"reward_means": rng.uniform(0.0, 1.0, self.num_arms).round(4).tolist(),
                "cost_means": cost.round(4).tolist()}

    def validate_params(self, params: Mapping[str, Any]) -> None:
        for key in self.param_keys:
            values = np.asarray(params[key], dtype=np.float64)
            if values.shape != (self.num_arms,) or not np.all(np.isfinite(values)):
                raise ValueError(f"task.params.{key}: expected {self.num_arms} finite numbers")
        cost = np.asarray(params["cost_means"], dtype=np.float64)
        if np.any(cost < 0) or np.any(cost > 1):
            raise ValueError("task.params.cost_means: must lie in [0, 1]")

    def _make_env(self) -> ConstrainedBanditEnv:
        return ConstrainedBanditEnv(self)

    def optimum(self, task: Task) -> tuple[float | None, np.ndarray | None]:
        """The task's constrained optimum (expected episode return, arm probabilities)."""
        task = self.validate_task(task)
        return bandit_optimum(task.params["reward_means"], task.params["cost_means"],
                              task.cost_limit, self.horizon)


# --------------------------------------------------------------------------------------
class PointNavEnv(_ToyEnv):
    """A point moving in the plane from the origin towards a goal past a hazard disk.

    Action: velocity in [-1, 1]² scaled by ``max_speed``. Reward: 10 × the decrease of the
    distance to the goal. Cost: 1 for each step that ends inside the hazard disk.
    Observation (float32): [position, goal − position, hazard centre − position] (6), or
    the position alone (2) where the family hides the layout (``observe_layout=False``).
    """

    def __init__(self, family: "PointNavFamily") -> None:
        super().__init__(family)
        self.horizon = family.horizon
        self.max_speed = family.max_speed
        self.observe_layout = family.observe_layout
        size = 6 if self.observe_layout else 2
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._x = self._y = 0.0
        self._t = 0

    def _configure(self, params: Mapping[str, Any]) -> None:
        self._gx, self._gy = float(params["goal_x"]), float(params["goal_y"])
        self._hx, self._hy = float(params["hazard_x"]), float(params["hazard_y"])
        self._hr2 = float(params["hazard_radius"]) ** 2

    def _obs(self) -> np.ndarray:
        x, y = self._x, self._y
        if not self.observe_layout:
            return np.array([x, y], dtype=np.float32)
        return np.array([x, y, self._gx - x, self._gy - y, self._hx - x, self._hy - y],
                        dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start_episode(seed)
        self._x, self._y = (0.02 * self.np_random.standard_normal(2)).tolist()
        self._t = 0
        return self._obs(), {"cost": 0.0, "task_id": self._task.task_id}

    def step(self, action):
        ax = min(max(float(action[0]), -1.0), 1.0)
        ay = min(max(float(action[1]), -1.0), 1.0)
        before = math.hypot(self._gx - self._x, self._gy - self._y)
        self._x += self.max_speed * ax
        self._y += self.max_speed * ay
        after = math.hypot(self._gx - self._x, self._gy - self._y)
        cost = float((self._x - self._hx) ** 2 + (self._y - self._hy) ** 2 < self._hr2)
        self._t += 1
        return self._obs(), 10.0 * (before - after), False, self._t >= self.horizon, {
            "cost": cost, "task_id": self._task.task_id}


class PointNavFamily(TaskFamily):
    """Navigation tasks: goal at distance U(0.8, 1.2) (train) / U(1.2, 1.5) (test) in a
    random direction; a hazard disk of radius U(0.3, 0.4) (train) / U(0.4, 0.5) (test)
    near the straight path, at U(0.4, 0.6) of the way with a small sideways offset.
    ``test_tight``: a hazard of radius U(0.55, 0.65), larger than any seen in training,
    on the straight path (offset U(-0.05, 0.05)) with its edge 0.05-0.15 from the start,
    and the goal 0.1-0.3 beyond its far edge: the straight path crosses the hazard for
    more than a diameter (> 20 steps, h = 5), going around it takes most of the horizon.
    ``observe_layout=False``: the policy sees only its position, so a task's goal and
    hazard are known only from its rewards and costs (the 2-D navigation task of MAML,
    with a hazard), and only adaptation can find them."""

    name = "PointNav"
    param_keys = ("goal_x", "goal_y", "hazard_x", "hazard_y", "hazard_radius")
    extra_splits = (TIGHT_SPLIT,)

    def __init__(self, horizon: int = 60, max_speed: float = 0.05, observe_layout: bool = True,
                 **limits: float) -> None:
        super().__init__(**limits)
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon: expected an integer >= 1, got {horizon!r}")
        if not isinstance(max_speed, (int, float)) or not max_speed > 0:
            raise ValueError(f"max_speed: expected a number > 0, got {max_speed!r}")
        if not isinstance(observe_layout, bool):
            raise ValueError(f"observe_layout: expected true or false, got {observe_layout!r}")
        self.horizon, self.max_speed = horizon, float(max_speed)
        self.observe_layout = observe_layout

    def _sample_params(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        if split == TIGHT_SPLIT:
            radius = rng.uniform(0.55, 0.65)
            angle = rng.uniform(0.0, 2 * math.pi)
            along, side = radius + rng.uniform(0.05, 0.15), rng.uniform(-0.05, 0.05)
            dist = along + radius + rng.uniform(0.1, 0.3)
            return self._layout(dist, radius, angle, along, side)
        dist = rng.uniform(0.8, 1.2) if split == "train" else rng.uniform(1.2, 1.5)
        radius = rng.uniform(0.3, 0.4) if split == "train" else rng.uniform(0.4, 0.5)
        angle = rng.uniform(0.0, 2 * math.pi)
        along, side = rng.uniform(0.4, 0.6) * dist, rng.uniform(-0.1, 0.1)
        return self._layout(dist, radius, angle, along, side)

    @staticmethod
    def _layout(dist: float, radius: float, angle: float, along: float, side: float
                ) -> dict[str, Any]:
        """Goal at ``dist`` in direction ``angle``; hazard ``along`` that direction and
        ``side`` across it."""
        ux, uy = math.cos(angle), math.sin(angle)
        return {"goal_x": round(dist * ux, 4), "goal_y": round(dist * uy, 4),
                "hazard_x": round(along * ux - side * uy, 4),
                "hazard_y": round(along * uy + side * ux, 4),
                "hazard_radius": round(radius, 4)}

    def validate_params(self, params: Mapping[str, Any]) -> None:
        for key in ("goal_x", "goal_y", "hazard_x", "hazard_y"):
            check_range(params, key, -math.inf, math.inf)
        check_range(params, "hazard_radius", 0.0, math.inf)

    def _make_env(self) -> PointNavEnv:
        return PointNavEnv(self)
