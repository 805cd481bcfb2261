"""Sweep specs: load a tune_configs/ YAML file, check it against the config classes, build them."""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import yaml

from metacpo_rllib.algorithms import TUNE_NAMES

#: The Tune names of the algorithms (registered by ``metacpo_rllib.rllib``).
ALGORITHM_NAMES = TUNE_NAMES

#: Top-level keys of a spec file and what each holds.
TOP_LEVEL_KEYS = {
    "name": "Tune run / MLflow experiment name",
    "algorithm": "one algorithm name or a list of them (all trials of one Tuner)",
    "family": "task family",
    "iterations": "training iterations per trial",
    "env_config": "family constructor overrides",
    "env_runners": "AlgorithmConfig.env_runners(...) fields",
    "training": "fixed MetaCPOConfig.training(...) fields",
    "grid": "training field -> list of values (Tune grid_search, full cross product) or a "
            "search space {choice: [...]}, {uniform: [low, high]}, {loguniform: [low, high]}, "
            "{grid_search: [...]}",
    "adaptation": "test-time adaptation after the last iteration",
    "evaluation": "MetaCPOConfig.evaluation(...) fields: θ evaluated on fixed training tasks "
                  "every evaluation_interval iterations (training meets its limit?)",
    "tune": "num_samples, max_concurrent, checkpoint_at_end",
    "scheduler": "optional trial scheduler: {type: asha, max_t, grace_period, "
                 "reduction_factor}",
    "mlflow": "experiment, log_checkpoint",
}
ADAPTATION_KEYS = {"test_tasks": 2, "adapt_steps": 1, "episodes_per_task": None,
                   "cost_limit": None, "task_seed": 12345, "eval_episodes": 20,
                   "split": "test"}
#: The ``evaluation`` section: MetaCPOConfig.evaluation fields (training evaluation).
EVALUATION_KEYS = ("evaluation_interval", "evaluation_duration", "evaluation_num_tasks",
                   "evaluation_seed")
TUNE_KEYS = {"num_samples": 1, "max_concurrent": None, "checkpoint_at_end": True}
MLFLOW_KEYS = {"experiment": None, "log_checkpoint": True}
SCHEDULER_KEYS = {"type": "asha", "max_t": None, "grace_period": 1, "reduction_factor": 4}
#: The search-space forms of a ``grid`` entry (a plain list is ``grid_search``).
SEARCH_KINDS = ("grid_search", "choice", "uniform", "loguniform")


class SpecError(ValueError):
    """An invalid spec: one message naming the offending key."""


@dataclasses.dataclass
class Adaptation:
    """Test-time adaptation run inside each trial after its last iteration."""

    test_tasks: int = 2
    adapt_steps: int = 1
    episodes_per_task: Optional[int] = None
    cost_limit: Optional[float] = None  # None: the family's (tighter) test limit
    task_seed: int = 12345
    eval_episodes: int = 20  # fresh evaluation episodes per task and step (0: none)
    split: str = "test"  # the held-out split (family.splits), e.g. "test_tight"


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A sampled ``grid`` entry: ``choice`` of ``values``, or ``uniform`` / ``loguniform``
    between ``values = (low, high)``; Tune draws one value per trial (``tune.num_samples``
    trials per grid point)."""

    kind: str
    values: tuple

    def domain(self) -> Any:
        """The Tune search space (``tune.choice`` / ``tune.uniform`` / ``tune.loguniform``)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)

    def probes(self) -> list:
        """The values validated before any trial: every choice, or both ends of a range."""
        return list(self.values)

    def __str__(self) -> str:
        return f"{self.kind}{list(self.values)}"


@dataclasses.dataclass
class Scheduler:
    """A Tune trial scheduler: ASHA (``type: asha``) stopping weak trials early on the
    sweep metric (``training_iteration`` as time; ``max_t`` None: the spec's iterations)."""

    type: str = "asha"
    max_t: Optional[int] = None
    grace_period: int = 1
    reduction_factor: float = 4


@dataclasses.dataclass
class SweepSpec:
    """A validated sweep: what ``metacpo sweep`` / ``compare`` turn into Tune runs."""

    name: str
    algorithms: list[str]
    family: str
    iterations: int
    env_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    env_runners: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: dict[str, list | SearchSpace] = dataclasses.field(default_factory=dict)
    adaptation: Adaptation = dataclasses.field(default_factory=Adaptation)
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)
    scheduler: Optional[Scheduler] = None
    num_samples: int = 1
    max_concurrent: Optional[int] = None
    checkpoint_at_end: bool = True
    experiment: Optional[str] = None  # MLflow experiment (default: ``name``)
    log_checkpoint: bool = True

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def grid_points(self) -> Iterator[dict[str, Any]]:
        """Every point of the grid (one empty point without a grid); a sampled entry
        (SearchSpace) is at its first probe value."""
        return self._points(lambda values: values if isinstance(values, list)
                            else values.probes()[:1])

    def probe_points(self) -> Iterator[dict[str, Any]]:
        """The grid points with every probe value of the sampled entries (validation)."""
        return self._points(lambda values: values if isinstance(values, list)
                            else values.probes())

    def _points(self, options: Any) -> Iterator[dict[str, Any]]:
        keys = list(self.grid)
        for values in itertools.product(*(options(self.grid[k]) for k in keys)):
            yield dict(zip(keys, values))

    def num_trials(self) -> int:
        """Trials per algorithm: grid size (lists only) times ``num_samples``."""
        return sum(1 for _ in self.grid_points()) * self.num_samples


# -- the config classes' fields --------------------------------------------------------------
def config_class(algorithm: str) -> type:
    """The AlgorithmConfig class of a Tune algorithm name."""
    from metacpo_rllib.rllib import config

    return config.config_class(algorithm)


def setter_fields(method: Any) -> set[str]:
    """Keyword arguments of an AlgorithmConfig setter (``training``, ``env_runners``)."""
    return {name for name, p in inspect.signature(method).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def training_fields() -> set[str]:
    """Fields accepted in ``training`` / ``grid``: MetaCPOConfig.training and
    AlgorithmConfig.training keywords."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    from metacpo_rllib.rllib import MetaCPOConfig

    return setter_fields(MetaCPOConfig.training) | setter_fields(AlgorithmConfig.training)


def env_runner_fields() -> set[str]:
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    return setter_fields(AlgorithmConfig.env_runners)


# -- type checks -------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return {bool: "a bool", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _check_like(key: str, value: Any, default: Any) -> None:
    """``value`` must have the type of the field's default (None on either side: left to
    ``validate()``)."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (str, list, dict, tuple)):
        ok = isinstance(value, type(default)) or (isinstance(default, tuple)
                                                  and isinstance(value, list))
    else:
        return
    if not ok:
        raise SpecError(f"{key}: expected {_type_name(default)}, got {value!r}")


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{key}: expected a mapping, got {value!r}")
    return dict(value)


def _unknown(section: str, data: Mapping[str, Any], allowed: Any,
             expected: Optional[str] = None) -> None:
    """Raise for the first key of ``data`` not in ``allowed`` (with a close match, if any)."""
    for key in data:
        if key not in allowed:
            prefix = f"{section}." if section else ""
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{prefix}{key}: unknown key{hint} (expected "
                            f"{expected or 'one of ' + ', '.join(sorted(allowed))})")


def _int(key: str, value: Any, low: int, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SpecError(f"{key}: expected an integer >= {low}, got {value!r}")
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise SpecError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def search_space(key: str, value: Any) -> list | SearchSpace:
    """A ``grid`` entry: a non-empty list (or ``{grid_search: [...]}``), or a SearchSpace
    (``{choice: [...]}``, ``{uniform: [low, high]}``, ``{loguniform: [low, high]}``)."""
    expected = ("a non-empty list of values or one of {choice: [...]}, {uniform: [low, "
                "high]}, {loguniform: [low, high]}, {grid_search: [...]}")
    if isinstance(value, list) and value:
        return value
    if not isinstance(value, Mapping) or len(value) != 1:
        raise SpecError(f"{key}: expected {expected}, got {value!r}")
    ((kind, args),) = value.items()
    if kind not in SEARCH_KINDS:
        close = difflib.get_close_matches(str(kind), SEARCH_KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SpecError(f"{key}.{kind}: unknown search space{hint} (expected one of "
                        f"{', '.join(SEARCH_KINDS)})")
    where = f"{key}.{kind}"
    if kind in ("grid_search", "choice"):
        if not isinstance(args, list) or not args:
            raise SpecError(f"{where}: expected a non-empty list of values, got {args!r}")
        return args if kind == "grid_search" else SearchSpace(kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise SpecError(f"{where}: expected [low, high], got {args!r}")
    low, high = (_number(where, v) for v in args)
    if not low < high:
        raise SpecError(f"{where}: expected low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"{where}: expected 0 < low, got {args!r}")
    return SearchSpace(kind, (low, high))


# -- loading ---------------------------------------------------------------------------------
def load_spec(path: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> SweepSpec:
    """Read a spec file, apply ``overrides`` (dotted keys, e.g. ``{"tune.num_samples": 2}``;
    None values are skipped) and validate it; raises SpecError (prefixed by the file)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SpecError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: invalid YAML ({err})") from None
    try:
        # the file's deprecated keys are renamed first, so that flags override them
        data = apply_overrides(renamed_cost_limit(data), overrides or {})
        return parse_spec(data, default_name=path.stem)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def apply_overrides(data: Any, overrides: Mapping[str, Any]) -> Any:
    """``data`` with each dotted key of ``overrides`` set (sections created as needed)."""
    if not isinstance(data, Mapping):
        return data
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        target = data
        for section in sections:
            if target.get(section) is None:
                target[section] = {}
            target = target[section]
            if not isinstance(target, dict):
                raise SpecError(f"{section}: expected a mapping, got {target!r}")
        target[key] = value
    return data


def renamed_cost_limit(data: Any) -> Any:
    """``data`` with ``training.cost_limit`` / ``grid.cost_limit``, the deprecated name of
    ``train_cost_limit``, renamed (one warning each); both names set: SpecError naming
    both."""
    if not isinstance(data, Mapping):
        return data
    sections = {name: data[name] for name in ("training", "grid")
                if isinstance(data.get(name), Mapping)}
    new = [f"{name}.train_cost_limit" for name, sec in sections.items()
           if "train_cost_limit" in sec]
    out = dict(data)
    for name, section in sections.items():
        if "cost_limit" not in section:
            continue
        if new:
            raise SpecError(f"{name}.cost_limit, {new[0]}: both set; cost_limit is the "
                            "deprecated name of train_cost_limit, set only train_cost_limit")
        warnings.warn(f"{name}.cost_limit: deprecated, use {name}.train_cost_limit (the "
                      "training tasks' cost limit; same value)", FutureWarning, stacklevel=3)
        out[name] = {("train_cost_limit" if k == "cost_limit" else k): v
                     for k, v in section.items()}
    return out


def parse_spec(data: Any, default_name: str = "sweep") -> SweepSpec:
    """Build a SweepSpec from a parsed mapping and validate it (see ``validate_spec``)."""
    data = _mapping("spec", renamed_cost_limit(data))
    _unknown("", data, TOP_LEVEL_KEYS)
    for key in ("algorithm", "family", "iterations"):
        if key not in data:
            raise SpecError(f"{key}: missing (required)")
    algorithms = data["algorithm"]
    algorithms = [algorithms] if isinstance(algorithms, str) else algorithms
    if not isinstance(algorithms, list) or not algorithms:
        raise SpecError(f"algorithm: expected a name or a list of names, got {algorithms!r}")
    for name in algorithms:
        if name not in ALGORITHM_NAMES:
            raise SpecError(f"algorithm: unknown algorithm {name!r}; expected one of "
                            f"{', '.join(ALGORITHM_NAMES)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"name: expected a non-empty string, got {name!r}")
    adaptation = _mapping("adaptation", data.get("adaptation"))
    _unknown("adaptation", adaptation, ADAPTATION_KEYS)
    evaluation = _mapping("evaluation", data.get("evaluation"))
    _unknown("evaluation", evaluation, EVALUATION_KEYS)
    tune_opts = _mapping("tune", data.get("tune"))
    _unknown("tune", tune_opts, TUNE_KEYS)
    mlflow_opts = _mapping("mlflow", data.get("mlflow"))
    _unknown("mlflow", mlflow_opts, MLFLOW_KEYS)
    scheduler = None
    if data.get("scheduler") is not None:
        scheduler_opts = _mapping("scheduler", data["scheduler"])
        _unknown("scheduler", scheduler_opts, SCHEDULER_KEYS)
        scheduler = Scheduler(**{**SCHEDULER_KEYS, **scheduler_opts})
    grid = _mapping("grid", data.get("grid"))
    for key, values in grid.items():
        if key in ("meta", "constrained"):
            raise SpecError(f"grid.{key}: not a grid field; list the algorithms under "
                            "`algorithm:` instead")
        grid[key] = search_space(f"grid.{key}", values)
    spec = SweepSpec(
        name=name, algorithms=list(algorithms), family=data["family"],
        iterations=data["iterations"],
        env_config=_mapping("env_config", data.get("env_config")),
        env_runners=_mapping("env_runners", data.get("env_runners")),
        training=_mapping("training", data.get("training")), grid=grid,
        adaptation=Adaptation(**adaptation), evaluation=evaluation, scheduler=scheduler,
        **{**TUNE_KEYS, **tune_opts}, **{**MLFLOW_KEYS, **mlflow_opts},
    )
    validate_spec(spec)
    return spec


def validate_spec(spec: SweepSpec) -> None:
    """Check every field, then build and ``validate()`` one config per algorithm and grid
    point (no Ray needed). Raises SpecError naming the first bad key."""
    from metacpo_rllib.envs import FAMILIES, make_family
    from metacpo_rllib.envs.base import check_cost_limit

    if not isinstance(spec.family, str) or spec.family not in FAMILIES:
        raise SpecError(f"family: unknown family {spec.family!r}; expected one of "
                        f"{', '.join(FAMILIES)}")
    _int("iterations", spec.iterations, 1)
    _int("tune.num_samples", spec.num_samples, 1)
    _int("tune.max_concurrent", spec.max_concurrent, 1, optional=True)
    for key in ("checkpoint_at_end", "log_checkpoint"):
        if not isinstance(getattr(spec, key), bool):
            section = "tune" if key == "checkpoint_at_end" else "mlflow"
            raise SpecError(f"{section}.{key}: expected a bool, got {getattr(spec, key)!r}")
    if spec.experiment is not None and not isinstance(spec.experiment, str):
        raise SpecError(f"mlflow.experiment: expected a string, got {spec.experiment!r}")
    _check_scheduler(spec)
    a = spec.adaptation
    _int("adaptation.test_tasks", a.test_tasks, 0)
    _int("adaptation.adapt_steps", a.adapt_steps, 0)
    _int("adaptation.episodes_per_task", a.episodes_per_task, 1, optional=True)
    _int("adaptation.task_seed", a.task_seed, 0)
    _int("adaptation.eval_episodes", a.eval_episodes, 0)
    for key, value in spec.evaluation.items():
        _int(f"evaluation.{key}", value, 0 if key == "evaluation_seed" else 1)
    if a.cost_limit is not None:
        try:
            check_cost_limit(a.cost_limit, "adaptation.cost_limit")
        except ValueError as err:
            raise SpecError(str(err)) from None
    from metacpo_rllib.rllib import MetaCPOConfig

    expected = ("a MetaCPOConfig.training field: "
                + ", ".join(sorted(setter_fields(MetaCPOConfig.training)))
                + "; or an AlgorithmConfig.training one such as gamma")
    _unknown("training", spec.training, training_fields(), expected)
    _unknown("grid", spec.grid, training_fields(), expected)
    _unknown("env_runners", spec.env_runners, env_runner_fields(),
             "an AlgorithmConfig.env_runners field such as num_env_runners")
    overlap = set(spec.training) & set(spec.grid)
    if overlap:
        raise SpecError(f"grid.{sorted(overlap)[0]}: also set in training; set it in one place")
    try:
        family = make_family(spec.family, **spec.env_config)
    except (TypeError, ValueError) as err:
        raise SpecError(f"env_config: {err}") from None
    if a.split not in family.splits:
        raise SpecError(f"adaptation.split: expected one of {list(family.splits)}, "
                        f"got {a.split!r}")
    for algorithm in spec.algorithms:
        defaults = config_class(algorithm)()
        for key, value in spec.training.items():
            _check_like(f"training.{key}", value, getattr(defaults, key, None))
        for key, values in spec.grid.items():
            probes = values if isinstance(values, list) else values.probes()
            where = f"grid.{key}" + ("" if isinstance(values, list) else f".{values.kind}")
            for value in probes:
                _check_like(where, value, getattr(defaults, key, None))
        for key, value in spec.env_runners.items():
            _check_like(f"env_runners.{key}", value, getattr(defaults, key, None))
        for point in spec.probe_points():
            try:
                build_config(spec, algorithm, point).validate()
            except Exception as err:  # RLlib raises ValueError or its own errors
                where = ", ".join(f"{k}={v!r}" for k, v in point.items())
                section = _section_of(str(err), spec, point)
                raise SpecError(f"{section}{err}" + (f" (grid point {where})" if where else "")
                                ) from None


def _check_scheduler(spec: SweepSpec) -> None:
    """The ``scheduler`` section: ASHA with integer ``max_t`` >= ``grace_period`` >= 1 and
    ``reduction_factor`` > 1."""
    s = spec.scheduler
    if s is None:
        return
    if not isinstance(s.type, str) or s.type.lower() != "asha":
        raise SpecError(f"scheduler.type: expected 'asha', got {s.type!r}")
    _int("scheduler.max_t", s.max_t, 1, optional=True)
    _int("scheduler.grace_period", s.grace_period, 1)
    max_t = spec.iterations if s.max_t is None else s.max_t
    if s.grace_period > max_t:
        raise SpecError(f"scheduler.grace_period: expected <= max_t ({max_t}), got "
                        f"{s.grace_period!r}")
    if _number("scheduler.reduction_factor", s.reduction_factor) <= 1:
        raise SpecError(f"scheduler.reduction_factor: expected a number > 1, got "
                        f"{s.reduction_factor!r}")


def _section_of(message: str, spec: SweepSpec, point: Mapping[str, Any]) -> str:
    """The section (``training.``, ``grid.``, ``env_runners.``) of the field an error names."""
    field = message.split(":", 1)[0].strip()
    if field in point:
        return "grid."
    if field in spec.training:
        return "training."
    if field in spec.env_runners:
        return "env_runners."
    if field in spec.evaluation:
        return "evaluation."
    return ""


# -- configs ---------------------------------------------------------------------------------
def build_config(spec: SweepSpec, algorithm: str, point: Optional[Mapping[str, Any]] = None,
                 on_train_result: Any = None) -> Any:
    """The AlgorithmConfig of one trial (``point``: its grid values), not validated."""
    config = (config_class(algorithm)()
              .environment(spec.family, env_config=dict(spec.env_config))
              .env_runners(**spec.env_runners)
              .training(**{**spec.training, **(point or {})}))
    if spec.evaluation:
        config.evaluation(**spec.evaluation)
    if on_train_result is not None:
        config.callbacks(on_train_result=on_train_result)
    return config


def config_key(field: str) -> str:
    """The key of a training field in ``AlgorithmConfig.to_dict()`` (``lambda_`` -> ``lambda``)."""
    return "lambda" if field == "lambda_" else field
