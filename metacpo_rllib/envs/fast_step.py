"""A faster ``Builder.step`` for the safety families, with the stock step's exact outputs.

safety-gymnasium 1.0.0 spends 80-95 % of a step in Python around the physics: ``mj_step`` in a
Python loop, ``mj_forward`` three times on a state that does not change in between, name
lookups (``data.body(name)``, ``model.sensor(name)``) for every read, a per-object lidar loop,
a ``Box.contains`` per observation key and a ``flatten``. :class:`FastStep` computes the same
step of a level-0 circle or button task (``Builder.step``, ``simulation_forward``,
``calculate_reward`` / ``calculate_cost`` / ``goal_achieved`` / ``obs`` of the task):

* the action clipped into ``data.ctrl``, one ``mj_step(model, data, n)`` call (n still drawn
  from the layout RNG, as the stock step does) and one ``mj_forward`` -- the accelerometer and
  contacts need it; every later ``mj_forward`` of the stock step runs on the same state and so
  changes nothing;
* reward, costs, goal contact, the flat observation (sensor copy, hinge sin/cos, pseudo-lidar
  with alias) and its bounds check in two compiled numba calls
  (:mod:`metacpo_rllib.envs.fast_kernel`) reading ``data.xpos``, ``data.xmat``,
  ``data.sensordata``, the agent's velocity and the contact geoms through views and index
  tables built once per reset (every reset compiles a new model); between the two calls numpy
  computes the lidar angles (``arctan2``) and MuJoCo the ball-joint matrices, as stock.

Exactness: every floating-point operation is the stock one, in the same order, and the
transcendentals whose compiled versions differ from numpy's (``arctan2``, ``exp``, ``x**2``
as the C library's ``pow``) are numpy's or the C library's own, so observations, rewards,
costs, terminations and infos are bitwise equal to the stock step (``tests/test_fast_step.py``).
Goal resampling, resets and rendering stay the stock code.
Tasks outside what this covers (natural lidar, compasses, mocaps, static geoms, vision,
action noise, shaped costs, other constrained objects) are refused with
:class:`UnsupportedTask`.
"""
from __future__ import annotations

import functools
import importlib
import operator
from typing import Any

import mujoco
import numpy as np

from metacpo_rllib.envs import compat

compat.apply()
# pylint: disable-next=wrong-import-position
from safety_gymnasium.utils.common_utils import ResamplingError  # noqa: E402

__all__ = ["FastStep", "UnsupportedTask", "UnknownRounding", "ego_rounding"]

_mj_step, _mj_forward, _mj_jac_body = mujoco.mj_step, mujoco.mj_forward, mujoco.mj_jacBody
# metacpo_rllib.envs.fast_kernel, imported (compiled, or loaded from numba's cache) by the
# first FastStep
kernel: Any = None


def _load_kernel() -> None:
    global kernel  # pylint: disable=global-statement
    if kernel is None:
        kernel = importlib.import_module("metacpo_rllib.envs.fast_kernel")

# Objects whose ``cal_cost`` FastStep reproduces; every other object must add no cost.
_COSTLESS = ("circle", "goal")


class UnsupportedTask(ValueError):
    """The task uses a feature :class:`FastStep` does not reproduce (use the stock step)."""


class UnknownRounding(UnsupportedTask):
    """numpy on this machine rounds the lidar's ego vector unlike every rounding the kernel
    knows (:func:`ego_rounding` is None): a property of the machine, not of the task."""


@functools.cache
def ego_rounding() -> int | None:
    """How numpy rounds the stock lidar's ego vector ``(pos - agent_pos) @ agent_mat`` on this
    machine (OpenBLAS picks its ``dgemv`` kernel by CPU): the first of
    ``kernel.EGO_ROUNDINGS`` that equals numpy bit for bit on 256 random vectors and
    matrices, or None when none does. Asked once per process."""
    _load_kernel()
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(256, 9))  # matrices as rows of data.xmat, as the stock reads
    offsets = rng.normal(size=(256, 3)) * np.array([2.0, 2.0, 0.1])
    for rounding in kernel.EGO_ROUNDINGS:
        if all(np.array_equal((world @ row.reshape(3, 3))[:2],
                              [kernel.ego_column(*world, row, j, rounding) for j in (0, 1)])
               for world, row in zip(offsets, rows)):
            return rounding
    return None


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
        self.ego_rounding = ego_rounding()
        if self.ego_rounding is None:
            raise UnknownRounding("fast_step: numpy's (3,) @ (3, 3) on this machine rounds "
                                  "unlike every kernel.EGO_ROUNDINGS; use fast_step=False")
        self.lidar = task.lidar_conf
        self.space = task.obs_info.obs_space_dict
        flat = task.observation_space
        self.low = np.ascontiguousarray(flat.low, dtype=np.float64)
        self.high = np.ascontiguousarray(flat.high, dtype=np.float64)
        self.is_circle = hasattr(task, "circle")
        self.buttons = getattr(task, "buttons", None)
        self.obstacles = {o.name: o for o in task._obstacles}  # pylint: disable=protected-access
        self.action_shape = builder.action_space.shape
        self.model: Any = None

    # -- per reset -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the cached views, addresses and tables for the model the last reset
        compiled (the views of ``data`` stay valid until the next reset)."""
        task = self.task
        model, data = task.model, task.data
        self.model, self.data = model, data
        self.ctrl_range = np.ascontiguousarray(model.actuator_ctrlrange, dtype=np.float64)
        self.ctrl, self.qvel = data.ctrl, data.qvel
        self.sensordata, self.xpos, self.xmat = data.sensordata, data.xpos, data.xmat
        self.agent_id = model.body("agent").id
        self.jacp = np.zeros((3, model.nv))
        self.vel = np.zeros(3)
        self.obs = np.zeros(self.low.shape[0])
        self.no_contacts = np.zeros((0, 2), dtype=np.int32)
        ipar, fpar = np.zeros(kernel.IPAR_SIZE, np.int64), kernel.new_fpar()
        self.ipar, self.fpar, self.out = ipar, fpar, np.zeros(kernel.OUT_SIZE)
        tables = self._plan_observation(model)
        tables.update(self._plan_costs(model))
        self.tab = kernel.pack_tables(tables, ipar)
        ipar[kernel.I_AGENT] = self.agent_id
        ipar[kernel.I_EGO_ROUNDING] = self.ego_rounding
        ipar[kernel.I_NBINS] = self.lidar.num_bins
        ipar[kernel.I_ALIAS] = bool(self.lidar.alias)
        ipar[kernel.I_CIRCLE] = self.is_circle
        self.exp_lidar = self.lidar.max_dist is None
        ipar[kernel.I_EXP_LIDAR] = self.exp_lidar
        fpar[kernel.F_BIN_SIZE] = (np.pi * 2) / self.lidar.num_bins
        fpar[kernel.F_MAX_DIST] = np.nan if self.lidar.max_dist is None else self.lidar.max_dist
        if self.is_circle:
            fpar[kernel.F_CIRCLE_RADIUS] = task.circle.radius
            fpar[kernel.F_REWARD_FACTOR] = task.reward_factor
        else:
            ipar[kernel.I_GOAL_ID] = model.body("goal").id
            fpar[kernel.F_REWARD_DISTANCE] = self.buttons.reward_distance
            fpar[kernel.F_REWARD_GOAL] = self.buttons.reward_goal

    def _plan_observation(self, model: Any) -> dict[str, np.ndarray]:
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
        hinges = [(int(model.sensor_adr[model.sensor(s).id]), offsets[s])
                  for s in (info.hinge_pos_names if angles else [])]
        # ball joints: MuJoCo's quat2mat (as BaseAgent's) between the two kernel calls
        self.quats = [(self.obs[offsets[s]:offsets[s] + 9],
                       self.sensordata[int(model.sensor_adr[model.sensor(s).id]):][:4])
                      for s in (info.ballquat_names if angles else [])]
        # lidar rows in the stock order: one per observed object position (-1: the origin)
        bodies, bases, groups = [], [], []
        for obstacle in task._obstacles:  # pylint: disable=protected-access
            if not obstacle.is_lidar_observed:
                continue
            base = offsets[obstacle.name + "_lidar"]
            groups.append(base)
            if obstacle.name == "circle":
                names: list[str | None] = [None]
            elif hasattr(obstacle, "num"):
                names = [f"{obstacle.name[:-1]}{i}" for i in range(obstacle.num)]
            else:
                names = [obstacle.name]
            for name in names:
                bodies.append(-1 if name is None else model.body(name).id)
                bases.append(base)
        end = min(groups) + len(groups) * self.lidar.num_bins
        if groups and (end != len(self.obs) or sorted(groups) != list(
                range(min(groups), end, self.lidar.num_bins))):
            raise UnsupportedTask("fast_step: the lidar groups do not end the observation")
        rows = len(bodies)
        self.ipar[kernel.I_ROWS] = rows
        self.ipar[kernel.I_BUTTONS_LIDAR] = offsets.get("buttons_lidar", -1)
        self.work = np.zeros((3, rows))
        self.ex, self.ey, self.dist = self.work[0], self.work[1], self.work[2]
        self.angle, self.sensor = np.zeros(rows), np.zeros(rows)
        return {"src": src, "dst": dst, "hinge_adr": [a for a, _ in hinges],
                "hinge_off": [o for _, o in hinges], "lidar_body": bodies,
                "lidar_base": bases}

    def _plan_costs(self, model: Any) -> dict[str, np.ndarray]:
        """Cost kinds in the obstacles' order, hazard bodies and per-geom contact tables."""
        kinds, keys, tables = [], [], {}
        codes = {"sigwalls": kernel.COST_SIGWALLS, "hazards": kernel.COST_HAZARDS,
                 "buttons": kernel.COST_BUTTONS}
        slots = {"sigwalls": kernel.O_SIGWALLS, "hazards": kernel.O_HAZARDS,
                 "buttons": kernel.O_BUTTONS}
        names = {"sigwalls": "cost_out_of_boundary", "hazards": "cost_hazards",
                 "buttons": "cost_buttons"}
        for name, obstacle in self.obstacles.items():
            if not obstacle.is_constrained or name in _COSTLESS:
                continue
            kinds.append(codes[name])
            keys.append((names[name], slots[name]))
            if name == "sigwalls":
                self.ipar[kernel.I_SIGWALLS] = obstacle.num
                self.fpar[kernel.F_LOCATE_FACTOR] = obstacle.locate_factor
            elif name == "hazards":
                tables["hazard_id"] = [model.body(f"hazard{i}").id for i in range(obstacle.num)]
                self.fpar[kernel.F_HAZARD_SIZE] = obstacle.size
                self.fpar[kernel.F_HAZARD_COST] = obstacle.cost
            else:
                self.fpar[kernel.F_BUTTON_COST] = obstacle.cost
        keys.append(("cost_sum", kernel.O_COST_SUM))
        # the info keys: all of them, and without cost_buttons (buttons timer running)
        self.cost_keys = _KeyedSlots(keys)
        self.cost_keys_idle = _KeyedSlots([k for k in keys if k[0] != "cost_buttons"])
        if self.buttons is not None:
            agent_geoms = set(self.task.agent.body_info.geom_names)
            geom_names = [model.geom(g).name for g in range(model.ngeom)]
            tables["geom_agent"] = [n in agent_geoms for n in geom_names]
            tables["geom_is_button"] = [n.startswith("button") for n in geom_names]
            tables["geom_button"] = [_button_index(n) for n in geom_names]
        tables["cost_kinds"] = kinds
        return tables

    # -- per step ---------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, float, bool, bool, dict]:
        """``Builder.step(action)``: the same 6-tuple, bitwise."""
        env, task, ipar = self.builder, self.task, self.ipar
        assert not env.done, "Environment must be reset before stepping."
        if type(action) is not np.ndarray:  # pylint: disable=unidiomatic-typecheck
            action = np.array(action, copy=False)
        if action.shape != self.action_shape:
            raise ValueError("Action dimension mismatch")
        if action.dtype != np.float64:  # np.clip to float64 bounds gives float64
            action = action.astype(np.float64)
        kernel.set_ctrl(action, self.ctrl_range, self.ctrl)  # np.clip to the ctrl range
        substeps = task.random_generator.random_generator.binomial(
            task.sim_conf.frameskip_binom_n, task.sim_conf.frameskip_binom_p)
        if substeps > 0:
            _mj_step(self.model, self.data, int(substeps))
        _mj_forward(self.model, self.data)
        buttons = self.buttons
        if self.is_circle:
            _mj_jac_body(self.model, self.data, self.jacp, None, self.agent_id)
            np.dot(self.jacp, self.qvel, out=self.vel)  # the agent's velocity, as stock
            geoms, keys = self.no_contacts, self.cost_keys
            task.specific_step()
        else:
            geoms = self.data.contact.geom
            active = buttons.timer == 0
            keys = self.cost_keys if active else self.cost_keys_idle
            ipar[kernel.I_BUTTONS_COST] = active
            ipar[kernel.I_GOAL_BUTTON] = buttons.goal_button
            self.fpar[kernel.F_LAST_DIST_GOAL] = task.last_dist_goal
            task.specific_step()  # ticks the buttons timer (read by the observation)
            ipar[kernel.I_BUTTONS_ZERO] = buttons.timer != 0
        obs = self._observe(geoms, True)
        out = self.out
        reward = out[kernel.O_REWARD]
        if not self.is_circle:
            task.last_dist_goal = out[kernel.O_DIST_GOAL]
        clip = task.reward_conf.reward_clip
        if clip and not -clip < reward < clip:
            reward = np.clip(reward, -clip, clip)
            print("Warning: reward was outside of range!")
        info = keys.read(out)
        env.cost = dict(info)  # as stock: the cost dict apart from the info dict
        if out[kernel.O_GOAL_MET]:  # the stock goal handling (rare): a new goal, or the end
            info["goal_met"] = True
            self._next_goal()
            ipar[kernel.I_BUTTONS_ZERO] = buttons.timer != 0
            ipar[kernel.I_GOAL_BUTTON] = buttons.goal_button
            obs = self._observe(self.data.contact.geom, False)
        if not task.agent.is_alive():
            env.terminated = True
        env.steps += 1
        if env.steps >= task.num_steps:
            env.truncated = True
        return obs, reward, info["cost_sum"], env.terminated, env.truncated, info

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

    def _observe(self, geoms: np.ndarray, costs: bool) -> np.ndarray:
        """``task.obs()`` flattened (and, with ``costs``, reward and costs into ``self.out``)."""
        self.ipar[kernel.I_WITH_COSTS] = costs
        kernel.step_outputs(self.sensordata, self.xpos, self.xmat, geoms, self.vel, self.obs,
                            self.work, self.tab, self.ipar, self.fpar, self.out)
        np.arctan2(self.ey, self.ex, out=self.angle)  # numpy's (SIMD) atan2, as stock
        if self.exp_lidar:  # numpy's exp, as stock
            np.exp(-self.lidar.exp_gain * self.dist, out=self.sensor)
        for mat, quat in self.quats:
            mujoco.mju_quat2Mat(mat, quat)  # BaseAgent's quat2mat, in place
        code = kernel.lidar_bins(self.obs, self.low, self.high, self.work, self.angle,
                                 self.sensor, self.tab, self.ipar, self.fpar)
        if code:
            what = "bad alias in the lidar" if code == 1 else "Bad obs"
            raise AssertionError(f"{what}: {self.obs} {self.space}")
        return self.obs.copy()


class _KeyedSlots:
    """The cost keys of the info dict and the slots of the kernel's output they read."""

    def __init__(self, keys: list[tuple[str, int]]) -> None:
        self.names = tuple(name for name, _ in keys)
        self.slots = operator.itemgetter(*(slot for _, slot in keys), 0)  # always a tuple

    def read(self, out: np.ndarray) -> dict[str, float]:
        """The info dict of a step: Python floats (the stock indicator values)."""
        return dict(zip(self.names, self.slots(out.tolist())))


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
    if not task.cost_conf.constrain_indicator:
        refuse("has shaped (not indicator) costs")
    kinds = {"circle", "sigwalls", "hazards", "buttons", "goal"}
    for obstacle in task._obstacles:  # pylint: disable=protected-access
        if obstacle.name not in kinds:
            refuse(f"has a {obstacle.name!r} object")
        if getattr(obstacle, "is_comp_observed", False):
            refuse(f"observes a compass of {obstacle.name!r}")
    if not (hasattr(task, "circle") or hasattr(task, "buttons")):
        refuse("is neither a circle nor a button task")
