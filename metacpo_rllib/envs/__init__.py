"""Task families by name: ``make_family(name, **overrides)`` and the list ``FAMILIES``."""
from __future__ import annotations

import importlib
from typing import Any

from metacpo_rllib.envs.base import SPLITS, Task, TaskEnv, TaskFamily

# name -> "module:class"; modules are imported on first use so that the toy families do not
# pull in mujoco / safety-gymnasium.
_REGISTRY: dict[str, str] = {
    "PointCircle": "metacpo_rllib.envs.safety:PointCircleFamily",
    "CarCircleHazard": "metacpo_rllib.envs.safety:CarCircleHazardFamily",
    "PointButton": "metacpo_rllib.envs.safety:PointButtonFamily",
    "ConstrainedBandit": "metacpo_rllib.envs.toy:ConstrainedBanditFamily",
    "PointNav": "metacpo_rllib.envs.toy:PointNavFamily",
}
FAMILIES: tuple[str, ...] = tuple(_REGISTRY)


def family_class(name: str) -> type[TaskFamily]:
    """The TaskFamily subclass registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"family: unknown family {name!r}; expected one of {list(FAMILIES)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_family(name: str, **overrides: Any) -> TaskFamily:
    """Build the family ``name``; ``overrides`` go to its constructor (e.g. cost limits)."""
    cls = family_class(name)
    try:
        return cls(**overrides)
    except TypeError as err:  # an unknown override: name it
        raise ValueError(f"family {name}: invalid override ({err})") from None


__all__ = ["FAMILIES", "SPLITS", "Task", "TaskEnv", "TaskFamily", "family_class", "make_family"]
