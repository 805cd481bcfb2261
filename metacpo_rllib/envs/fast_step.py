"""A faster ``Builder.step`` for the safety families, with the stock step's exact outputs.

safety-gymnasium 1.0.0 spends 80-95 % of a step in Python around the physics: ``mj_step`` in a
Python loop, ``mj_forward`` three times on a state that does not change in between, name
lookups (``data.body(name)``, ``model.sensor(name)``) for every read, a per-object lidar loop,
a ``Box.contains`` per observation key and a ``flatten``. :class:`FastStep` computes the same
step of a level-0 circle or button task (``Builder.step``, ``simulation_forward``,
``calculate_reward`` / ``calculate_cost`` / ``goal_achieved`` / ``obs`` of the task):

* one ``mj_step(model, data, nstep=n)`` call (n still drawn from the layout RNG, as the stock
  step does) and one ``mj_forward`` -- the accelerometer and contacts need it; every later
  ``mj_forward`` of the stock step runs on the same state and so changes nothing;
* body and sensor addresses, the flat observation's layout and the geom lookup tables of the
  contact tests are built once per reset (every reset compiles a new model);
* the pseudo-lidar of all objects in one vectorised pass, hazard distances and contact tests
  vectorised, the flat observation written in place, one vectorised bounds check.

Exactness: every floating-point operation is the stock one, elementwise in the same order
(the ego vectors as batched ``(1, 3) @ (3, 3)`` products, which round as the stock per-object
``matmul`` does; distances as ``abs`` of a complex number, as stock), so observations, rewards,
costs, terminations and infos are bitwise equal to the stock step
(``tests/test_fast_step.py``). Goal resampling, resets and rendering stay the stock code.
Tasks outside what this covers (natural lidar, compasses, mocaps, static geoms, vision,
action noise, other constrained objects) are refused with :class:`UnsupportedTask`.
"""
from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from metacpo_rllib.envs import compat

compat.apply()
# pylint: disable-next=wrong-import-position
from safety_gymnasium.utils.common_utils import ResamplingError  # noqa: E402

__all__ = ["FastStep", "UnsupportedTask"]

# Objects whose ``cal_cost`` FastStep reproduces; every other object must add no cost.
_COSTLESS = ("circle", "goal")


class UnsupportedTask(ValueError):
    """The task uses a feature :class:`FastStep` does not reproduce (use the stock step)."""


class FastStep:
    """The stock ``Builder.step`` of ``builder`` (a safety-gymnasium Builder), computed faster.

    Call :meth:`refresh` after every reset (the model is recompiled), then :meth:`step` in
    place of ``builder.step``. Returns the stock 6-tuple (float64 flat observation).
    """

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        task = builder.task
        self.task = task
        _check_supported(task)
        self.lidar = task.lidar_conf
        self.bin_size = (np.pi * 2) / self.lidar.num_bins
        self.space = task.obs_info.obs_space_dict
        flat = task.observation_space
        self.low, self.high = flat.low, flat.high
        self.is_circle = hasattr(task, "circle")
        self.obstacles = {o.name: o for o in task._obstacles}  # pylint: disable=protected-access
        self.model: Any = None

    # -- per reset -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the cached addresses and tables for the model the last reset compiled."""
        task = self.task
        model, data = task.model, task.data
        self.model, self.data = model, data
        self.ctrl_low = model.actuator_ctrlrange[:, 0].copy()
        self.ctrl_high = model.actuator_ctrlrange[:, 1].copy()
        self.agent_id = model.body("agent").id
        self.jacp = np.zeros((3, model.nv))
        self.obs = np.zeros(self.low.shape[0])
        self.inside = np.zeros(self.low.shape[0], dtype=bool)
        self._plan_observation(model)
        self.hazard_ids = (np.array([model.body(f"hazard{i}").id
                                     for i in range(self.obstacles["hazards"].num)], dtype=int)
                           if "hazards" in self.obstacles else None)
        if "buttons" in self.obstacles:
            self._plan_contacts(model)
        if "goal" in self.obstacles:
            self.goal_id = model.body("goal").id

    def _plan_observation(self, model: Any) -> None:
        """Where each observation key comes from and where it lands in the flat vector."""
        agent, task = self.task.agent, self.task
        info, conf = agent.sensor_info, agent.sensor_conf
        direct: list[tuple[str, slice]] = [(s, slice(None)) for s in conf.sensors]
        direct += [(s, slice(None)) for s in info.hinge_vel_names + info.ballangvel_names]
        if info.freejoint_pos_name:
            direct.append((info.freejoint_pos_name, slice(2, None)))
        if info.freejoint_qvel_name:
            direct.append((info.freejoint_qvel_name, slice(None)))
        angles = conf.sensors_angle_components
        if not angles:
            direct += [(s, slice(None)) for s in info.hinge_pos_names + info.ballquat_names]
        offsets, offset = {}, 0
        for key, box in self.space.spaces.items():
            offsets[key] = offset
            offset += int(np.prod(box.shape))
        src, dst = [], []
        for name, part in direct:
            sensor = model.sensor(name).id
            adr, dim = int(model.sensor_adr[sensor]), int(model.sensor_dim[sensor])
            rows = np.arange(adr, adr + dim)[part]
            src.extend(rows)
            dst.extend(range(offsets[name], offsets[name] + len(rows)))
        self.src, self.dst = np.array(src, dtype=int), np.array(dst, dtype=int)
        self.hinges = [(int(model.sensor_adr[model.sensor(s).id]), offsets[s])
                       for s in (info.hinge_pos_names if angles else [])]
        self.quats = [(int(model.sensor_adr[model.sensor(s).id]), offsets[s])
                      for s in (info.ballquat_names if angles else [])]
        # lidar rows: one per observed object position (bodies, or the circle's origin)
        bodies, bins, fixed = [], [], []
        for obstacle in task._obstacles:  # pylint: disable=protected-access
            if not obstacle.is_lidar_observed:
                continue
            base = offsets[obstacle.name + "_lidar"]
            if obstacle.name == "circle":
                fixed.append(base)
                continue
            names = ([obstacle.name] if not hasattr(obstacle, "num")
                     else [f"{obstacle.name[:-1]}{i}" for i in range(obstacle.num)])
            for name in names:
                bodies.append(model.body(name).id)
                bins.append(base)
        self.lidar_bodies = np.array(bodies, dtype=int)
        self.lidar_base = np.array(fixed + bins, dtype=int)
        self.lidar_fixed = len(fixed)  # leading rows at the origin (circle)
        self.lidar_slices = [slice(offsets[o.name + "_lidar"],
                                   offsets[o.name + "_lidar"] + self.lidar.num_bins)
                             for o in task._obstacles  # pylint: disable=protected-access
                             if o.is_lidar_observed]
        rows = len(self.lidar_base)
        self.points = np.zeros((rows, 3))
        self.world = np.zeros((rows, 3))
        self.ego = np.zeros(rows, dtype=complex)
        self.lidar_index = np.zeros((3, rows), dtype=int)
        self.lidar_value = np.zeros((3, rows))
        self.lidar_start = min(part.start for part in self.lidar_slices)
        if self.lidar_start + len(self.lidar_slices) * self.lidar.num_bins != len(
                self.obs):
            raise UnsupportedTask("fast_step: the lidar groups do not end the observation")
        self.buttons_lidar = (slice(offsets["buttons_lidar"],
                                    offsets["buttons_lidar"] + self.lidar.num_bins)
                              if "buttons_lidar" in offsets else None)

    def _plan_contacts(self, model: Any) -> None:
        """Per-geom tables: agent geom, button geom and which button (-1: none)."""
        agent_geoms = set(self.task.agent.body_info.geom_names)
        names = [model.geom(g).name for g in range(model.ngeom)]
        self.geom_is_agent = np.array([n in agent_geoms for n in names])
        self.geom_is_button = np.array([n.startswith("button") for n in names])
        self.geom_button = np.array([_button_index(n) for n in names], dtype=int)

    # -- per step ---------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, float, bool, bool, dict]:
        """``Builder.step(action)``: the same 6-tuple, bitwise."""
        env, task, data = self.builder, self.task, self.data
        assert not env.done, "Environment must be reset before stepping."
        action = np.array(action, copy=False)
        if action.shape != env.action_space.shape:
            raise ValueError("Action dimension mismatch")
        np.minimum(np.maximum(action, self.ctrl_low), self.ctrl_high, out=data.ctrl)  # np.clip
        substeps = task.random_generator.random_generator.binomial(
            task.sim_conf.frameskip_binom_n, task.sim_conf.frameskip_binom_p)
        if substeps > 0:
            mujoco.mj_step(self.model, data, nstep=int(substeps))
        mujoco.mj_forward(self.model, data)
        xpos = data.xpos
        agent_pos = xpos[self.agent_id]
        goal_met = False if self.is_circle else self._goal_achieved()
        reward = self._reward(agent_pos, goal_met)
        clip = task.reward_conf.reward_clip
        if clip and not -clip < reward < clip:
            reward = np.clip(reward, -clip, clip)
            print("Warning: reward was outside of range!")
        info = self._cost(agent_pos)
        env.cost = dict(info)  # as stock: the cost dict apart from the info dict
        cost = info["cost_sum"]
        task.specific_step()
        if goal_met:  # the stock goal handling (rare): layout update and a new goal
            info["goal_met"] = True
            self._next_goal()
        if not task.agent.is_alive():
            env.terminated = True
        env.steps += 1
        if env.steps >= task.num_steps:
            env.truncated = True
        return self._observe(), reward, cost, env.terminated, env.truncated, info

    def _next_goal(self) -> None:
        """The stock step's goal handling: update the layout, sample a new goal (or end)."""
        env, task = self.builder, self.task
        if not task.mechanism_conf.continue_goal:
            env.terminated = True
            return
        task.update_layout()
        if not task.mechanism_conf.terminate_resample_failure:
            task.update_world()
            return
        try:
            task.update_world()
        except ResamplingError:
            env.terminated = True

    def _reward(self, agent_pos: np.ndarray, goal_met: bool) -> float:
        task = self.task
        if self.is_circle:  # CircleLevel0.calculate_reward
            mujoco.mj_jacBody(self.model, self.data, self.jacp, None, self.agent_id)
            x, y, _ = agent_pos
            u, v, _ = np.dot(self.jacp, self.data.qvel)
            radius = np.sqrt(x**2 + y**2)
            return 0.0 + (((-u * y + v * x) / radius)
                          / (1 + np.abs(radius - task.circle.radius))) * task.reward_factor
        # ButtonLevel0.calculate_reward
        buttons = task.buttons
        dist_goal = np.sqrt(np.sum(np.square(self.data.xpos[self.goal_id][:2] - agent_pos[:2])))
        reward = 0.0 + (task.last_dist_goal - dist_goal) * buttons.reward_distance
        task.last_dist_goal = dist_goal
        if goal_met:
            reward += buttons.reward_goal
        return reward

    def _cost(self, agent_pos: np.ndarray) -> dict:
        """``Builder._cost``: the obstacles' ``cal_cost`` in order, summed, then indicators."""
        cost: dict[str, Any] = {}
        for name, obstacle in self.obstacles.items():
            if not obstacle.is_constrained or name in _COSTLESS:
                continue
            if name == "sigwalls":
                out = np.abs(agent_pos[0]) > obstacle.locate_factor
                if obstacle.num == 4:
                    out = out or np.abs(agent_pos[1]) > obstacle.locate_factor
                cost["cost_out_of_boundary"] = out
            elif name == "hazards":
                dist = np.sqrt(np.sum(np.square(self.data.xpos[self.hazard_ids][:, :2]
                                                - agent_pos[:2]), axis=1))
                total = 0
                for d in dist[dist <= obstacle.size]:
                    total += obstacle.cost * (obstacle.size - d)
                cost["cost_hazards"] = total
            elif name == "buttons" and obstacle.timer == 0:
                total = 0
                for _ in range(self._wrong_button_contacts()):
                    total += obstacle.cost
                cost["cost_buttons"] = total
        cost["cost_sum"] = sum(v for k, v in cost.items() if k.startswith("cost_"))
        if self.task.cost_conf.constrain_indicator:
            for key in cost:
                cost[key] = float(cost[key] > 0.0)
        return cost

    def _contact_geoms(self) -> np.ndarray:
        return self.data.contact.geom[: self.data.ncon]

    def _goal_achieved(self) -> bool:
        """A contact between an agent geom and the goal button's geom."""
        geoms = self._contact_geoms()
        if not len(geoms):
            return False
        goal = self.geom_button[geoms] == self.task.buttons.goal_button
        agent = self.geom_is_agent[geoms]
        return bool((goal.any(axis=1) & agent.any(axis=1)).any())

    def _wrong_button_contacts(self) -> int:
        """Contacts between an agent geom and a button geom other than the goal's."""
        geoms = self._contact_geoms()
        if not len(geoms):
            return 0
        goal = self.geom_button[geoms] == self.task.buttons.goal_button
        hit = (self.geom_is_button[geoms].any(axis=1) & self.geom_is_agent[geoms].any(axis=1)
               & ~goal.any(axis=1))
        return int(hit.sum())

    def _observe(self) -> np.ndarray:
        """``task.obs()`` flattened: sensors, then each observed object's pseudo-lidar."""
        data, obs = self.data, self.obs
        sensors = data.sensordata
        obs[self.dst] = sensors[self.src]
        for adr, off in self.hinges:
            theta = float(sensors[adr])
            obs[off], obs[off + 1] = np.sin(theta), np.cos(theta)
        for adr, off in self.quats:
            quat = np.array(sensors[adr:adr + 4], dtype="float64")
            mujoco.mju_quat2Mat(obs[off:off + 9], quat)  # BaseAgent's quat2mat, in place
        self._lidar(obs)
        if self.buttons_lidar is not None and self.task.buttons.timer != 0:
            obs[self.buttons_lidar] = 0.0
        inside = np.greater_equal(obs, self.low, out=self.inside)
        inside &= obs <= self.high
        if np.count_nonzero(inside) != len(obs):  # Box.contains of every key (NaN: outside)
            raise AssertionError(f"Bad obs {obs} {self.space}")
        return obs.copy()

    def _lidar(self, obs: np.ndarray) -> None:
        """``BaseTask._obs_lidar_pseudo`` of every observed object at once."""
        conf, data, n = self.lidar, self.data, self.lidar.num_bins
        obs[self.lidar_start:] = 0.0  # the lidar groups fill the end of the observation
        points = self.points  # object positions with z = 0 (the stock ego vector drops z)
        points[self.lidar_fixed:, :2] = data.xpos[self.lidar_bodies, :2]
        np.subtract(points, data.xpos[self.agent_id], out=self.world)
        ego = np.matmul(self.world[:, None, :], data.xmat[self.agent_id].reshape(3, 3))
        z = self.ego
        z.real, z.imag = ego[:, 0, 0], ego[:, 0, 1]
        dist = np.abs(z)
        angle = np.remainder(np.arctan2(z.imag, z.real), np.pi * 2)
        bins = (angle / self.bin_size).astype(int)
        if conf.max_dist is None:
            sensor = np.exp(-conf.exp_gain * dist)
        else:
            sensor = np.maximum(0, conf.max_dist - dist) / conf.max_dist
        if not conf.alias:
            np.maximum.at(obs, self.lidar_base + bins, sensor)
            return
        alias = (angle - self.bin_size * bins) / self.bin_size
        if np.count_nonzero((alias < 0) | (alias > 1)):
            raise AssertionError(f"bad alias {alias}")
        index, value = self.lidar_index, self.lidar_value
        index[0], index[1], index[2] = bins, bins + 1, bins - 1
        value[0], value[1], value[2] = sensor, alias * sensor, (1 - alias) * sensor
        np.remainder(index, n, out=index)
        np.maximum.at(obs, (index + self.lidar_base).ravel(), value.ravel())


def _button_index(name: str) -> int:
    rest = name[len("button"):]
    return int(rest) if name.startswith("button") and rest.isdigit() else -1


def _check_supported(task: Any) -> None:
    """Raise UnsupportedTask unless ``task`` uses only what FastStep reproduces."""
    def refuse(why: str) -> None:
        raise UnsupportedTask(f"fast_step: {type(task).__name__} {why}; use fast_step=False")

    if task.lidar_conf.type != "pseudo":
        refuse("uses natural lidar")
    if task.observe_vision or not task.observation_flatten:
        refuse("observes vision or unflattened observations")
    if task._mocaps or task._is_load_static_geoms:  # pylint: disable=protected-access
        refuse("has mocaps or static geoms")
    if task.action_noise:
        refuse("has action noise")
    if task.reward_conf.reward_orientation:
        refuse("has an orientation reward")
    kinds = {"circle", "sigwalls", "hazards", "buttons", "goal"}
    for obstacle in task._obstacles:  # pylint: disable=protected-access
        if obstacle.name not in kinds:
            refuse(f"has a {obstacle.name!r} object")
        if getattr(obstacle, "is_comp_observed", False):
            refuse(f"observes a compass of {obstacle.name!r}")
    if not (hasattr(task, "circle") or hasattr(task, "buttons")):
        refuse("is neither a circle nor a button task")
