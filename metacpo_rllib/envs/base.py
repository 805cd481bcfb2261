"""Tasks and task families: the seeded train/test task distributions every env layer shares."""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

#: The splits of every family: the training distribution and the paper's held-out test one.
SPLITS = ("train", "test")
#: The held-out split whose constraint is tighter than anything in training (families that
#: have it list it in ``splits``): a trained policy violates there at first and has to adapt.
TIGHT_SPLIT = "test_tight"


@dataclasses.dataclass(frozen=True)
class Task:
    """One constrained task: layout parameters plus a cost limit.

    ``cost_limit`` is in episode-cost units (the sum of per-step ``info["cost"]`` over an
    episode). ``task_id`` identifies the task within its family (unique per family, split
    and sampling seed); it is attached to every episode sampled on the task.
    """

    family: str
    params: Mapping[str, Any]
    cost_limit: float
    task_id: int = 0
    split: str = "train"

    def to_dict(self) -> dict[str, Any]:
        """A plain, picklable, JSON-friendly dict (what crosses process boundaries)."""
        return {
            "family": self.family,
            "params": {k: _plain(v) for k, v in self.params.items()},
            "cost_limit": float(self.cost_limit),
            "task_id": int(self.task_id),
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "Task") -> "Task":
        if isinstance(data, Task):
            return data
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"task: unknown keys {sorted(unknown)}")
        return cls(**dict(data))

    def with_cost_limit(self, cost_limit: float) -> "Task":
        return dataclasses.replace(self, cost_limit=float(cost_limit))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def check_cost_limit(value: Any, field: str = "cost_limit") -> float:
    """Validate a cost limit (episode-cost units, finite and >= 0)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field}: must be a finite number >= 0, got {value}")
    return value


class TaskEnv(gym.Env):
    """A gymnasium env whose task can be changed between episodes.

    Conventions: float32 observations, the standard 5-tuple ``step``, and each step's cost
    (>= 0) in ``info["cost"]``; ``info["task_id"]`` names the task. ``set_task`` validates
    the task with the env's family and stores it; it takes effect at the next ``reset``
    (the first task set on a fresh env applies at once). ``get_task`` returns the latest
    task set. Subclasses set ``self.family``, implement ``_configure(params)`` and call
    ``_apply_pending_task()`` in ``reset``.
    """

    family: "TaskFamily"
    _task: Task | None = None
    _pending: Task | None = None

    def set_task(self, task: Task | Mapping[str, Any]) -> None:
        self._pending = self.family.validate_task(task)
        if self._task is None:
            self._apply(self._pending)

    def get_task(self) -> Task:
        return self._pending if self._pending is not None else self._task

    @property
    def task_id(self) -> int:
        """The id of the task in effect (-1 before any task is set)."""
        return -1 if self._task is None else int(self._task.task_id)

    def _apply(self, task: Task) -> None:
        self._configure(task.params)
        self._task = task

    def _apply_pending_task(self) -> None:
        if self._pending is not None and self._pending is not self._task:
            self._apply(self._pending)
        if self._task is None:
            raise RuntimeError(f"{type(self).__name__}.reset: no task set "
                               "(build the env with family.make_env)")

    def _configure(self, params: Mapping[str, Any]) -> None:
        """Make the layout parameters of a task take effect (called between episodes)."""
        raise NotImplementedError


class TaskFamily(ABC):
    """A named distribution of tasks with a train and a test split (and possibly more
    held-out splits, e.g. :data:`TIGHT_SPLIT`; ``splits`` lists them).

    Subclasses define ``name``, ``param_keys`` and ``_sample_params``/``_make_env`` and may
    override ``validate_params``. ``sample_tasks`` is reproducible for a given seed. The
    splits are the keys of the class's ``RANGES`` dict when it has one, else
    :data:`SPLITS` plus ``extra_splits``. Every held-out split uses the test cost limit.
    """

    name: str = ""
    param_keys: tuple[str, ...] = ()
    extra_splits: tuple[str, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        """The names of the family's task splits ("train" first)."""
        ranges = getattr(self, "RANGES", None)
        if isinstance(ranges, Mapping):
            return tuple(ranges)
        return SPLITS + tuple(self.extra_splits)

    def cost_limit_of(self, split: str) -> float:
        """The default cost limit of ``split`` (held-out splits: the test limit)."""
        return self.cost_limits["train" if split == "train" else "test"]

    def __init__(self, train_cost_limit: float = 10.0, test_cost_limit: float = 5.0) -> None:
        self.cost_limits = {
            "train": check_cost_limit(train_cost_limit, "train_cost_limit"),
            "test": check_cost_limit(test_cost_limit, "test_cost_limit"),
        }

    # -- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _sample_params(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        """Draw one task's layout parameters from the split's distribution."""

    @abstractmethod
    def _make_env(self) -> TaskEnv:
        """Build an env of this family (its task is set right after)."""

    def validate_params(self, params: Mapping[str, Any]) -> None:
        """Raise ValueError naming the field when a layout parameter is invalid."""

    # -- public API -----------------------------------------------------------------------
    def sample_tasks(
        self,
        n: int,
        split: str = "train",
        seed: int | None = 0,
        cost_limit: float | None = None,
    ) -> list[Task]:
        """Sample ``n`` tasks of ``split``; the same seed gives the same tasks."""
        if split not in self.splits:
            raise ValueError(f"split: expected one of {self.splits}, got {split!r}")
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n: expected a positive integer, got {n!r}")
        limit = self.cost_limit_of(split) if cost_limit is None else check_cost_limit(cost_limit)
        rng = np.random.default_rng(seed)
        # Task ids: distinct between splits so tasks of two splits never share an id
        # (train 0.., test 1_000_000.., the next split 2_000_000.., ...).
        base = 1_000_000 * self.splits.index(split)
        tasks = []
        for i in range(int(n)):
            params = {k: _plain(v) for k, v in self._sample_params(rng, split).items()}
            tasks.append(Task(self.name, params, limit, task_id=base + i, split=split))
        return tasks

    def default_task(self, split: str = "train") -> Task:
        """The first task of ``split`` with seed 0 (what an env built without a task uses)."""
        return self.sample_tasks(1, split, seed=0)[0]

    def validate_task(self, task: Task | Mapping[str, Any]) -> Task:
        """Return ``task`` as a Task after checking it belongs to this family and is valid."""
        task = Task.from_dict(task)
        if task.family != self.name:
            raise ValueError(f"task.family: task of family {task.family!r} given to {self.name!r}")
        unknown = set(task.params) - set(self.param_keys)
        if unknown:
            raise ValueError(f"task.params: unknown keys {sorted(unknown)} for {self.name}")
        missing = set(self.param_keys) - set(task.params)
        if missing:
            raise ValueError(f"task.params: missing keys {sorted(missing)} for {self.name}")
        check_cost_limit(task.cost_limit, "task.cost_limit")
        if task.split not in self.splits:
            raise ValueError(f"task.split: expected one of {self.splits}, got {task.split!r}")
        self.validate_params(task.params)
        return task

    def make_env(self, task: Task | Mapping[str, Any] | None = None,
                 **render_kwargs: Any) -> TaskEnv:
        """Build an env set to ``task`` (the family's default train task when None).
        ``render_kwargs`` (``render_mode="rgb_array"``, ...) are for families whose envs
        render (the safety-gymnasium ones)."""
        task = self.default_task() if task is None else self.validate_task(task)
        env = self._make_env(**render_kwargs)
        env.set_task(task)
        return env


def check_range(params: Mapping[str, Any], key: str, low: float, high: float,
                low_open: bool = True, high_open: bool = True) -> None:
    """Raise ValueError naming ``key`` unless low < params[key] < high (bounds as flagged)."""
    value = params[key]
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"task.params.{key}: expected a number, got {value!r}") from None
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (math.isfinite(value) and ok_low and ok_high):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"task.params.{key}: must lie in {lo}{low}, {high}{hi}, got {value}")
