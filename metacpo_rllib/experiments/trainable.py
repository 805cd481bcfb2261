"""One Tune trainable for all four algorithms, so that a sweep over algorithms × seeds is one
Tuner: the trial config's ``algorithm`` key picks the config class (MetaCPOConfig,
MetaTRPOConfig, CPOConfig or TRPOConfig) the trial runs with."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

from metacpo_rllib.experiments import tracking
from metacpo_rllib.experiments.spec import ALGORITHM_NAMES, config_class
from metacpo_rllib.rllib.algorithm import MetaCPO

#: The trial-config key naming the algorithm of a trial of ``SweepAlgorithm``.
ALGORITHM_KEY = "algorithm"


def split_algorithm(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(algorithm name, the rest of the config) of a trial config dict."""
    rest = dict(config)
    name = rest.pop(ALGORITHM_KEY, "MetaCPO")
    if name not in ALGORITHM_NAMES:
        raise ValueError(f"{ALGORITHM_KEY}: expected one of {', '.join(ALGORITHM_NAMES)}, "
                         f"got {name!r}")
    return name, rest


def algorithm_config(config: Any) -> Any:
    """The AlgorithmConfig of a trial config dict with an ``algorithm`` key, which it keeps
    as an attribute (so the results' ``config`` name the algorithm too); other configs,
    e.g. a checkpoint's config state, are returned as they are."""
    if isinstance(config, Mapping) and ALGORITHM_KEY in config:
        name, _ = split_algorithm(config)
        return config_class(name)().update_from_dict(dict(config))
    return config


class SweepAlgorithm(MetaCPO):
    """Meta-CPO, Meta-TRPO, CPO or TRPO, as the trial config's ``algorithm`` says (the
    Algorithm's config, and so ``config.algo_class``, is that algorithm's)."""

    def __init__(self, config: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(algorithm_config(config), *args, **kwargs)

    def save_to_path(self, path: Any = None, *args: Any, **kwargs: Any) -> str:
        """RLlib's checkpoint, recording the algorithm's own class (e.g. CPO) as the one to
        build: it loads like a checkpoint of ``metacpo train``."""
        path = super().save_to_path(path, *args, **kwargs)
        ctor_file = Path(path) / self.CLASS_AND_CTOR_ARGS_FILE_NAME
        if kwargs.get("filesystem") is None and ctor_file.is_file():
            info = pickle.loads(ctor_file.read_bytes())
            info["class"] = self.config.algo_class
            ctor_file.write_bytes(pickle.dumps(info))
        return path

    @classmethod
    def default_resource_request(cls, config: Any) -> Any:
        if isinstance(config, Mapping) and ALGORITHM_KEY in config:
            name, rest = split_algorithm(config)
            return config_class(name)().algo_class.default_resource_request(rest)
        return super().default_resource_request(config)


def trial_run_name(trial: Any) -> str:
    """The run name of a Tune trial of one of the four algorithms (``SweepAlgorithm`` or a
    registered name such as "MetaCPO"); other trainables keep Tune's trial name."""
    config = trial.config or {}
    name = config.get(ALGORITHM_KEY, trial.trainable_name)
    if name not in ALGORITHM_NAMES:
        return str(trial)
    return tracking.run_name_for(name, config.get("env"), config.get("seed"))


def trial_dirname(trial: Any) -> str:
    """A trial's folder: its run name and Tune's unique trial id."""
    return f"{trial_run_name(trial)}_{trial.trial_id}"
