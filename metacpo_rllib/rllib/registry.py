"""Registration with Ray: every task family as an env name, the four algorithms (the rows of
``metacpo_rllib.algorithms.ALGORITHM_TABLE``) as Tune trainables."""
from __future__ import annotations

import functools
import importlib
from typing import Any

import ray
from ray.tune.registry import register_env, register_trainable

from metacpo_rllib.algorithms import ALGORITHM_TABLE
from metacpo_rllib.envs import FAMILIES, make_family

#: Tune / RLlib names of the algorithms -> "module:class" (from ``algorithms.ALGORITHM_TABLE``).
ALGORITHMS: dict[str, str] = {a.name: f"metacpo_rllib.rllib.algorithm:{a.name}"
                              for a in ALGORITHM_TABLE}


def family_overrides(env_config: Any) -> dict[str, Any]:
    """The family constructor overrides carried by an ``env_config`` (an EnvContext or
    dict); RLlib's own key ``num_envs`` is dropped."""
    return {k: v for k, v in dict(env_config or {}).items() if k != "num_envs"}


def make_family_env(family: str, env_config: Any) -> Any:
    """Env creator: build one env of ``family`` inside the calling (runner) process;
    ``env_config`` carries the family's constructor overrides."""
    return make_family(family, **family_overrides(env_config)).make_env()


def register_envs() -> None:
    """Register each family name (``config.environment("PointNav")``)."""
    for name in FAMILIES:
        register_env(name, functools.partial(make_family_env, name))


def algorithm_class(name: str) -> type:
    """The Algorithm class of Tune name ``name``, imported on first use (as RLlib's own
    algorithm registry does): a config finds its Algorithm class here, so the config
    module does not import the Algorithm module that imports it."""
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def register_algorithms() -> None:
    """Register the Algorithm classes with Tune (``tune.run("MetaCPO", ...)``)."""
    for name in ALGORITHMS:
        register_trainable(name, algorithm_class(name))


def register_all() -> None:
    """Register the envs and the algorithms (again)."""
    register_envs()
    register_algorithms()


def install_init_hook() -> None:
    """Re-register after every ``ray.init`` in this process.

    Tune keeps registrations in the cluster's KV store (flushed once, at the first
    ``ray.init``), so after ``ray.shutdown()`` a new local instance would not know the
    names. Tune's own flush uses the same hook list.
    """
    hooks = getattr(getattr(ray, "_private", None) and ray._private.worker,
                    "_post_init_hooks", None)
    if hooks is not None and register_all not in hooks:
        hooks.append(register_all)
