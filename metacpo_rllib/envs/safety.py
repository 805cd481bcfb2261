"""Safety-gymnasium task families (PointCircle, CarCircleHazard, PointButton) and their TaskEnv.

How a task reaches the simulator. safety-gymnasium 1.0.0 builds one ``BaseTask`` object per env
(agent, geoms, observation space). Every ``Builder.reset`` then samples a fresh layout from the
task's placement dict and recompiles the MuJoCo model from generated XML (``World.rebuild``).
So geom *attributes* (circle radius, wall offset, hazard count and area, placement extents) are
read again at every reset, the *placement dict* (which objects exist, where each may go) is
cached after the first reset, and the *observation space* is fixed at construction. A task
change therefore

* mutates geom attributes of the existing task object (no new Builder, agent or spaces);
* drops the cached placement dict only when counts, wall offsets or extents changed, so the
  next reset rebuilds it (a few dict entries);
* takes effect at the next ``reset``, through the model recompile safety-gymnasium does anyway.

Spaces are identical across all tasks of a family: each family has a fixed set of object types
and lidar has a fixed number of bins whatever the number of objects.

Lean world: safety-gymnasium compiles a 190 MB HD star skybox into every model, at every reset
(>95 % of a reset, ~0.3 s). It is visual only, so by default (``lean_world=True``) our envs use a
small gradient skybox instead; physics, non-vision observations, reward and cost are unchanged.

Conventions: float32 observations and actions; ``info["cost"]`` is safety-gymnasium's 0/1
per-step indicator (1 when any constraint is violated in that step); cost limits are in the
same episode units. Design choices:

* Episode length (``max_episode_steps``): 500 for the circle families, 1000 for PointButton,
  as safety-gymnasium registers Circle/Button and as the paper authors' tasks set ``num_steps``
  (their sampler's horizon is 500 for circle tasks).
* Hazard and button positions are not task parameters: as in the authors' tasks, every episode
  draws them with safety-gymnasium's layout sampler inside the task's area, from the env's
  seeded RNG. ``reset(seed=s)`` makes a layout reproducible; unseeded envs start from OS
  entropy. A task fixes the counts and the placement area, not one particular layout.
* Circle tasks start the agent in [-0.2, 0.2]² (as the authors' tasks do), so it always starts
  between the walls; tasks with ``radius * factor <= 0.25`` are rejected.
"""
from __future__ import annotations

import copy
import math
import threading
import warnings
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import yaml

from metacpo_rllib.envs import compat
from metacpo_rllib.envs.base import Task, TaskEnv, TaskFamily, check_range
from metacpo_rllib.envs.fast_step import FastStep, UnknownRounding

compat.apply()

# pylint: disable=wrong-import-position
from safety_gymnasium import world as _sg_world  # noqa: E402
from safety_gymnasium.assets.geoms import Hazards, Sigwalls  # noqa: E402
from safety_gymnasium.bases.base_task import BaseTask  # noqa: E402
from safety_gymnasium.builder import Builder  # noqa: E402
from safety_gymnasium.tasks.safe_navigation.button.button_level0 import ButtonLevel0  # noqa: E402
from safety_gymnasium.tasks.safe_navigation.circle.circle_level0 import CircleLevel0  # noqa: E402

__all__ = [
    "SafetyTaskEnv",
    "PointCircleFamily",
    "CarCircleHazardFamily",
    "PointButtonFamily",
    "make_bare_env",
]

AGENT_START = 0.2  # half-width of the agent's start square in the circle tasks
WALL_MARGIN = 0.05  # walls must lie at least this far beyond the start square
FLOOR = 3.5  # safety-gymnasium's floor half-size: nothing is placed beyond it
MAX_OBJECTS = 30  # cap on each object count (layout sampling slows down, then fails)
# Counts start at 1: safety-gymnasium's lidar cannot observe an empty object group.
CIRCLE_HAZARD_SIZE = 0.12
# Default hazard keepout of CarCircleHazard; safety-gymnasium's (and the authors') 0.4 makes
# the 12-hazard test layouts take 60-130 ms of rejection sampling per reset (0.3: ~5 ms).
CIRCLE_HAZARD_KEEPOUT = 0.3
BUTTON_KEEPOUT = 0.2  # buttons and hazards of PointButton (the authors' value)


# -- lean world ---------------------------------------------------------------------------------
LEAN_SKYBOX = {"@type": "skybox", "@builtin": "gradient", "@rgb1": "0.3 0.3 0.45",
               "@rgb2": "0 0 0", "@width": "32", "@height": "192"}
_assets_config: dict | None = None
_yaml_swap = threading.Lock()


class _LeanAssetsYaml:
    """What ``safety_gymnasium.world`` sees as ``yaml`` while a lean world builds: the assets
    config parsed once, with :data:`LEAN_SKYBOX` in place of the six HD star images."""

    FullLoader = yaml.FullLoader

    @staticmethod
    def load(stream: Any, Loader: Any = None) -> dict:  # noqa: N803 - yaml's signature
        global _assets_config
        if _assets_config is None:
            config = yaml.load(stream, Loader=Loader)  # noqa: S506 - the package's own file
            config["textures"]["skybox"] = LEAN_SKYBOX
            _assets_config = config
        return copy.deepcopy(_assets_config)


class _LeanWorld(_sg_world.World):
    """safety-gymnasium's World, compiled with :data:`LEAN_SKYBOX`."""

    def build(self) -> None:
        with _yaml_swap:  # the module global is swapped only for this call
            _sg_world.yaml = _LeanAssetsYaml
            try:
                super().build()
            finally:
                _sg_world.yaml = yaml


# -- safety-gymnasium tasks with adjustable layouts ---------------------------------------------
class _CircleTask(CircleLevel0):
    """Circle reward, two constraint walls at x = ±radius·factor, optionally hazards."""

    def __init__(self, config: dict, num_steps: int, hazard_keepout: float | None) -> None:
        super().__init__(config=config)
        self.num_steps = num_steps
        self.agent.placements = [(-AGENT_START, -AGENT_START, AGENT_START, AGENT_START)]
        self.agent.keepout = 0.0
        self._add_geoms(Sigwalls(num=2, locate_factor=1.125, size=FLOOR, is_constrained=True))
        if hazard_keepout is not None:
            self._add_geoms(Hazards(num=0, size=CIRCLE_HAZARD_SIZE, keepout=hazard_keepout,
                                    is_constrained=True))

    def configure(self, radius: float, factor: float, num_hazards: int | None = None,
                  hazard_extent: float | None = None) -> bool:
        """Set the layout; True when the placement dict had to be dropped."""
        self.circle.radius = float(radius)  # pylint: disable=no-member
        stale = False
        wall = float(radius) * float(factor)
        walls = self.sigwalls  # pylint: disable=no-member
        if walls.locate_factor != wall:
            walls.locate_factor = wall
            walls.__post_init__()  # recomputes the wall locations from locate_factor
            stale = True
        if num_hazards is not None:
            hazards = self.hazards  # pylint: disable=no-member
            area = [(-hazard_extent, -hazard_extent, hazard_extent, hazard_extent)]
            if hazards.num != num_hazards or hazards.placements != area:
                hazards.num, hazards.placements = int(num_hazards), area
                stale = True
        if stale:
            self.placements_conf.placements = None
        return stale


class _ButtonTask(ButtonLevel0):
    """Press the goal button among ``num_buttons`` (other buttons cost), avoid the hazards."""

    def __init__(self, config: dict, num_steps: int) -> None:
        super().__init__(config=config)
        self.num_steps = num_steps
        self.buttons.is_constrained = True  # pylint: disable=no-member
        self.buttons.keepout = BUTTON_KEEPOUT  # pylint: disable=no-member
        self._add_geoms(Hazards(num=0, keepout=BUTTON_KEEPOUT, is_constrained=True))

    def configure(self, extent: float, num_buttons: int, num_hazards: int) -> bool:
        """Set the layout; True when the placement dict had to be dropped."""
        extents = (-float(extent), -float(extent), float(extent), float(extent))
        buttons, hazards = self.buttons, self.hazards  # pylint: disable=no-member
        if (tuple(self.placements_conf.extents), buttons.num, hazards.num) == (
                extents, num_buttons, num_hazards):
            return False
        self.placements_conf.extents = extents
        buttons.num, hazards.num = int(num_buttons), int(num_hazards)
        self.placements_conf.placements = None
        return True


class _Builder(Builder):
    """safety-gymnasium's Builder around a task object we construct (no registry lookup).

    With ``lean_world`` the task gets a :class:`_LeanWorld` up front, so ``Underlying._build``
    takes its rebuild path from the first reset on (the stock path creates the World at the
    first reset and builds it twice). With ``fast_step`` every step is :class:`FastStep`'s,
    whose outputs equal the stock step's bitwise (``fast_step=False``: the stock step); on a
    machine whose numpy rounds the lidar's ego vector unlike every rounding the kernel knows
    (:class:`~metacpo_rllib.envs.fast_step.UnknownRounding`) it warns and takes the stock
    step, so that the outputs stay the stock ones.
    """

    def __init__(self, task_factory: Callable[[dict], BaseTask], agent: str,
                 lean_world: bool = True, fast_step: bool = False, **kwargs: Any) -> None:
        self._task_factory = task_factory
        self._lean_world = lean_world
        with warnings.catch_warnings():  # gymnasium Box: float32 bounds cast to float64 dtype
            warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
            super().__init__(task_id=f"metacpo-{agent}", config={"agent_name": agent}, **kwargs)
        self._fast = None
        if fast_step:
            try:
                self._fast = FastStep(self)
            except UnknownRounding as err:  # the machine's, not the task's: keep the stock step
                warnings.warn(f"{err}; taking the stock step", RuntimeWarning, stacklevel=2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        out = super().reset(seed=seed, options=options)
        if self._fast is not None:
            self._fast.refresh()  # every reset compiles a new model
        return out

    def step(self, action: np.ndarray):
        if self._fast is None:
            return super().step(action)
        return self._fast.step(action)

    def _get_task(self) -> BaseTask:
        task = self._task_factory(self.config)
        task.build_observation_space()
        if self._lean_world:
            task.world = _LeanWorld(task.agent, task._obstacles)  # pylint: disable=protected-access
        return task


def _entropy_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**32))


# -- the TaskEnv --------------------------------------------------------------------------------
class SafetyTaskEnv(TaskEnv):
    """A safety-gymnasium env whose layout and cost limit come from a Task of its family.

    Task semantics as in ``TaskEnv``. ``reset(seed=s)`` seeds safety-gymnasium's layout RNG. Observations are float32;
    ``info["cost"]`` is the 0/1 step cost and ``info["task_id"]`` the current task's id; the
    ``cost_*`` entries of safety-gymnasium stay in ``info``.
    """

    metadata = {"render_modes": ["rgb_array", "depth_array"], "render_fps": 30}

    def __init__(self, family: "_SafetyFamily", render_mode: str | None = None,
                 **render_kwargs: Any) -> None:
        """``render_mode`` ("rgb_array" / "depth_array") and ``render_kwargs`` (``width``,
        ``height``, ``camera_name``: "fixedfar", "track", ...) go to safety-gymnasium's
        Builder; MuJoCo's offscreen renderer needs ``MUJOCO_GL`` (``metacpo_rllib.render``)."""
        self.family = family
        self._sg = _Builder(family._task_factory, family.agent, lean_world=family.lean_world,
                            fast_step=family.fast_step, render_mode=render_mode,
                            **render_kwargs)
        self._sg.set_seed(_entropy_seed())
        obs, act = self._sg.observation_space, self._sg.action_space
        low, high = obs.low.astype(np.float32), obs.high.astype(np.float32)
        self._observe_cost = family.observe_cost
        if self._observe_cost:  # one more input: the cost of the step that led here (>= 0)
            low, high = np.append(low, np.float32(0.0)), np.append(high, np.float32(np.inf))
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Box(act.low.astype(np.float32),
                                           act.high.astype(np.float32), dtype=np.float32)
        self.render_mode = render_mode
        self._task_id = -1
        self._boundary: float | None = None

    # -- task API ---------------------------------------------------------------------------
    def _configure(self, params: Mapping[str, Any]) -> None:
        self._sg.task.configure(**params)
        self._boundary = self.family.boundary_halfwidth(params)

    def _apply(self, task: Task) -> None:
        super()._apply(task)
        self._task_id = self.task_id  # cached: read on every step

    @property
    def sim_task(self) -> BaseTask:
        """The underlying safety-gymnasium task object (geoms, agent, model, data)."""
        return self._sg.task

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._apply_pending_task()
        self._close_viewers()  # a reset compiles a new model: its viewer is made on render
        obs, info = self._sg.reset(seed=seed)
        info["cost"] = 0.0
        info["task_id"] = self._task_id
        return self._observation(obs, 0.0), info

    def step(self, action):
        obs, reward, cost, terminated, truncated, info = self._sg.step(
            np.asarray(action, dtype=np.float64))
        if self._boundary is not None:  # after the step, as safety-gymnasium's sigwalls
            x, y = self._sg.task.agent.pos[:2]
            out = max(abs(x), abs(y)) > self._boundary
            info["cost_out_of_boundary"] = float(out)
            cost += float(out)
        info["cost"] = float(cost)
        info["task_id"] = self._task_id
        return self._observation(obs, cost), float(reward), terminated, truncated, info

    def _observation(self, obs: np.ndarray, cost: float) -> np.ndarray:
        """safety-gymnasium's observation as float32, with ``cost`` appended when the
        family observes its cost."""
        if self._observe_cost:
            return np.concatenate((obs, (cost,)), dtype=np.float32)
        return obs.astype(np.float32)

    def render(self):
        return self._sg.render()

    def close(self) -> None:
        """Free the renderer's OpenGL contexts (if any)."""
        self._close_viewers()

    def _close_viewers(self) -> None:
        viewers = getattr(self._sg.task, "_viewers", None)
        if viewers:
            for viewer in viewers.values():
                viewer.close()
            viewers.clear()
            self._sg.task.viewer = None


# -- families -----------------------------------------------------------------------------------
def _check_count(params: Mapping[str, Any], key: str, low: int, high: int = MAX_OBJECTS) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"task.params.{key}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"task.params.{key}: must lie in [{low}, {high}], got {value}")
    return int(value)


def override_ranges(defaults: Mapping[str, Mapping[str, Any]],
                    ranges: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A copy of a family's ``RANGES`` (``defaults``) with the entries of ``ranges`` replaced,
    e.g. ``{"train": {"factor": [0.28, 0.75]}}``. Each entry keeps its kind (a
    ``[low, high]`` pair or one value); ValueError names the first bad entry."""
    merged = copy.deepcopy(dict(defaults))
    if not isinstance(ranges, Mapping):
        raise ValueError(f"ranges: expected a mapping of split -> {{key: range}}, got {ranges!r}")
    for split, entries in ranges.items():
        if split not in merged or not isinstance(entries, Mapping):
            raise ValueError(f"ranges.{split}: expected one of the splits {tuple(merged)} "
                             f"mapped to {{key: range}}, got {entries!r}")
        for key, value in entries.items():
            field = f"ranges.{split}.{key}"
            if key not in merged[split]:
                raise ValueError(f"{field}: unknown key, expected one of {tuple(merged[split])}")
            old = merged[split][key]
            if isinstance(old, tuple):
                pair = tuple(value) if isinstance(value, (list, tuple)) else ()
                if (len(pair) != 2 or not all(type(v) is type(old[0]) or (
                        isinstance(old[0], float) and type(v) is int) for v in pair)
                        or not pair[0] <= pair[1]):
                    raise ValueError(f"{field}: expected [low, high] with low <= high, like "
                                     f"{list(old)}, got {value!r}")
                merged[split][key] = tuple(type(old[0])(v) for v in pair)
            elif type(value) is not type(old):
                raise ValueError(f"{field}: expected one {type(old).__name__}, got {value!r}")
            else:
                merged[split][key] = value
    return merged


class _SafetyFamily(TaskFamily):
    """Shared plumbing: agent name, task factory, ``max_episode_steps``, ``lean_world``,
    ``fast_step`` (the stock step's outputs, bitwise, in a fraction of its time; ``False``:
    safety-gymnasium's own step), ``ranges`` (overrides of the class's ``RANGES``) and
    ``observe_cost`` (default False: safety-gymnasium's observation; True: one more input,
    the cost of the step that led to the observation, 0 after a reset, so a policy can
    react to a constraint it does not see, such as a circle task's walls)."""

    agent: str = ""
    default_episode_steps: int = 500

    def __init__(self, max_episode_steps: int | None = None, lean_world: bool = True,
                 fast_step: bool = True, ranges: Mapping[str, Mapping[str, Any]] | None = None,
                 observe_cost: bool = False, **limits: float) -> None:
        super().__init__(**limits)
        if not isinstance(observe_cost, bool):
            raise ValueError(f"observe_cost: expected a bool, got {observe_cost!r}")
        self.observe_cost = observe_cost
        if ranges:
            self.RANGES = override_ranges(type(self).RANGES, ranges)
            rng = np.random.default_rng(0)
            for split in ranges:  # a range whose tasks the family rejects, on 64 draws
                for _ in range(64):
                    try:
                        self.validate_params(self._sample_params(rng, split))
                    except ValueError as err:
                        raise ValueError(f"ranges.{split}: gives invalid tasks ({err})") from None
        steps = self.default_episode_steps if max_episode_steps is None else max_episode_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"max_episode_steps: expected a positive integer, got {steps!r}")
        self.max_episode_steps = int(steps)
        self.lean_world = bool(lean_world)
        if not isinstance(fast_step, bool):
            raise ValueError(f"fast_step: expected a bool, got {fast_step!r}")
        self.fast_step = fast_step

    def _task_factory(self, config: dict) -> BaseTask:
        raise NotImplementedError

    def boundary_halfwidth(self, params: Mapping[str, Any]) -> float | None:
        """Half-width of the square outside which a step costs 1 more (None: no boundary)."""
        del params
        return None

    def _make_env(self, **render_kwargs: Any) -> SafetyTaskEnv:
        return SafetyTaskEnv(self, **render_kwargs)

    def make_bare_env(self, lean_world: bool = False) -> Builder:
        """This family's safety-gymnasium Builder without the task layer (6-tuple ``step``,
        float64 obs); configure it with ``env.task.configure(**task.params)``."""
        return _Builder(self._task_factory, self.agent, lean_world=lean_world)


class _CircleFamily(_SafetyFamily):
    """Circle tasks: reward for running along a circle of ``radius``; cost 1 for each step with
    |x| > ``radius * factor`` (beyond one of the two walls)."""

    def _task_factory(self, config: dict) -> BaseTask:
        return _CircleTask(config, self.max_episode_steps, None)

    def validate_params(self, params: Mapping[str, Any]) -> None:
        check_range(params, "radius", 0.0, FLOOR)
        check_range(params, "factor", 0.0, 1.0)
        wall = float(params["radius"]) * float(params["factor"])
        if wall <= AGENT_START + WALL_MARGIN:
            raise ValueError(
                f"task.params.factor: walls at radius*factor = {wall:.3f} must lie beyond the "
                f"agent's start square (> {AGENT_START + WALL_MARGIN})")


class PointCircleFamily(_CircleFamily):
    """Point agent on the circle task with two constraint walls at x = ±radius·factor.

    Train: radius U(1.0, 1.5), factor U(0.55, 0.75); test: radius U(2.0, 2.5),
    factor U(0.55, 0.65). Episodes last ``max_episode_steps`` (default 500).
    """

    name = "PointCircle"
    param_keys = ("radius", "factor")
    agent = "Point"
    RANGES = {"train": {"radius": (1.0, 1.5), "factor": (0.55, 0.75)},
              "test": {"radius": (2.0, 2.5), "factor": (0.55, 0.65)},
              # the training circles, walls at radius·factor in (0.28, 0.54): closer than
              # every training wall (>= 0.55), beyond the start square (> 0.25)
              "test_tight": {"radius": (1.0, 1.5), "factor": (0.28, 0.36)}}

    def _sample_params(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        ranges = self.RANGES[split]
        return {"radius": float(rng.uniform(*ranges["radius"])),
                "factor": float(rng.uniform(*ranges["factor"]))}


class CarCircleHazardFamily(_CircleFamily):
    """Car agent on the circle task with the two walls plus hazards of size 0.12.

    Train: radius U(1.0, 1.5), factor U(0.55, 0.75), num_hazards U{4..6}, hazard_extent 1.4;
    test: radius U(1.5, 2.0), factor U(0.55, 0.65), num_hazards U{10..12}, hazard_extent 1.8.
    Each episode places the hazards in [-hazard_extent, hazard_extent]² (layout RNG), centres
    at least ``2 * hazard_keepout`` apart and ``hazard_keepout`` (default 0.3) from the start.
    Episodes last ``max_episode_steps`` (default 500).
    """

    name = "CarCircleHazard"
    param_keys = ("radius", "factor", "num_hazards", "hazard_extent")
    agent = "Car"
    RANGES = {"train": {"radius": (1.0, 1.5), "factor": (0.55, 0.75), "num_hazards": (4, 6),
                        "hazard_extent": 1.4},
              "test": {"radius": (1.5, 2.0), "factor": (0.55, 0.65), "num_hazards": (10, 12),
                       "hazard_extent": 1.8},
              # the training layout with about twice the training hazards in the same area
              "test_tight": {"radius": (1.0, 1.5), "factor": (0.55, 0.75),
                             "num_hazards": (9, 11), "hazard_extent": 1.4}}

    def __init__(self, hazard_keepout: float = CIRCLE_HAZARD_KEEPOUT, **overrides: Any) -> None:
        # set before the base class validates tasks drawn from overridden ``ranges``
        check_range({"hazard_keepout": hazard_keepout}, "hazard_keepout", 0.0, 1.0,
                    low_open=False)
        self.hazard_keepout = float(hazard_keepout)
        super().__init__(**overrides)

    def _task_factory(self, config: dict) -> BaseTask:
        return _CircleTask(config, self.max_episode_steps, self.hazard_keepout)

    def _sample_params(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        ranges = self.RANGES[split]
        low, high = ranges["num_hazards"]
        return {"radius": float(rng.uniform(*ranges["radius"])),
                "factor": float(rng.uniform(*ranges["factor"])),
                "num_hazards": int(rng.integers(low, high + 1)),
                "hazard_extent": float(ranges["hazard_extent"])}

    def validate_params(self, params: Mapping[str, Any]) -> None:
        super().validate_params(params)
        _check_count(params, "num_hazards", 1)
        check_range(params, "hazard_extent", self.hazard_keepout, FLOOR, high_open=False)


class PointButtonFamily(_SafetyFamily):
    """Point agent pressing a goal button among ``num_buttons``; hazards and wrong buttons cost.

    Train: extent U(1.75, 2.0), num_buttons U{3..6}, num_hazards = num_buttons + 3;
    test: extent U(2.6, 2.9), num_buttons U{6..10}, num_hazards = num_buttons + 6.
    Each episode places agent, buttons and hazards (size 0.2) in [-extent, extent]² (layout
    RNG). No gremlins (as in the authors' tasks). Episodes last ``max_episode_steps``
    (default 1000).

    ``boundary`` (default None: none) adds a cost of 1 for each step that ends with
    max(|x|, |y|) > extent + ``boundary`` (``info["cost_out_of_boundary"]``): a boundary the
    agent neither sees nor touches, so observations, rewards and layouts are those of the
    family without it, bit for bit; only the cost differs.
    """

    name = "PointButton"
    param_keys = ("extent", "num_buttons", "num_hazards")
    agent = "Point"
    default_episode_steps = 1000
    RANGES = {"train": {"extent": (1.75, 2.0), "num_buttons": (3, 6), "extra_hazards": 3},
              "test": {"extent": (2.6, 2.9), "num_buttons": (6, 10), "extra_hazards": 6},
              # the training arena and buttons with 9 extra hazards instead of 3
              "test_tight": {"extent": (1.75, 2.0), "num_buttons": (3, 6), "extra_hazards": 9}}

    def __init__(self, boundary: float | None = None, **kwargs: Any) -> None:
        if boundary is not None and (isinstance(boundary, bool) or not isinstance(
                boundary, (int, float)) or not 0.0 <= boundary < math.inf):
            raise ValueError("boundary: expected None or a margin >= 0 beyond the extent, "
                             f"got {boundary!r}")
        self.boundary = None if boundary is None else float(boundary)
        super().__init__(**kwargs)

    def _task_factory(self, config: dict) -> BaseTask:
        return _ButtonTask(config, self.max_episode_steps)

    def boundary_halfwidth(self, params: Mapping[str, Any]) -> float | None:
        return None if self.boundary is None else float(params["extent"]) + self.boundary

    def _sample_params(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        ranges = self.RANGES[split]
        low, high = ranges["num_buttons"]
        buttons = int(rng.integers(low, high + 1))
        return {"extent": float(rng.uniform(*ranges["extent"])), "num_buttons": buttons,
                "num_hazards": buttons + ranges["extra_hazards"]}

    def validate_params(self, params: Mapping[str, Any]) -> None:
        check_range(params, "extent", 1.0, FLOOR, low_open=False, high_open=False)
        _check_count(params, "num_buttons", 1)
        _check_count(params, "num_hazards", 1)


def make_bare_env(family: str | _SafetyFamily, task: Task | Mapping[str, Any] | None = None,
                  lean_world: bool = False, **overrides: Any) -> Builder:
    """A safety-gymnasium Builder laid out as ``task`` without the task layer (benchmarks)."""
    if isinstance(family, str):
        from metacpo_rllib.envs import make_family

        family = make_family(family, **overrides)
    task = family.default_task() if task is None else family.validate_task(task)
    env = family.make_bare_env(lean_world=lean_world)
    env.task.configure(**task.params)
    return env
