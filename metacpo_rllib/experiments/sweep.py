"""Run a SweepSpec with Ray Tune: one Tuner over algorithms × grid × samples, logging to one
MLflow experiment."""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from metacpo_rllib.experiments.callbacks import (AdaptAtEnd, MetaCPOMLflowCallback,
                                                  adaptation_report)
from metacpo_rllib.experiments.progress import TrialIterationProgress
from metacpo_rllib.experiments.spec import SweepSpec, build_config, config_class, config_key
from metacpo_rllib.experiments.tracking import Guard, resolve_tracking_uri

#: The metric of every sweep's TuneConfig (mode ``max``), so that
#: ``ResultGrid.get_best_result()`` works and an ASHA scheduler has a per-iteration signal:
#: the mean return of the training tasks after adaptation (after the inner steps; for CPO /
#: TRPO, with no inner loop, the return of θ), reported by all four algorithms every
#: iteration. The held-out tasks' figures come at the last iteration only, e.g.
#: ``get_best_result("adaptation/eval_return_mean", "max")``.
METRIC, MODE = "metacpo/post_return_mean", "max"
#: The columns of the Tune progress table: result key -> header.
PROGRESS_COLUMNS = {
    "training_iteration": "iter", "metacpo/post_return_mean": "return",
    "metacpo/post_cost_mean": "cost", "metacpo/post_violation_rate": "violation",
    "adaptation/return_mean": "test return", "adaptation/cost_mean": "test cost",
    "adaptation/violation_rate": "test violation"}


def param_space(spec: SweepSpec, algorithm: str) -> dict[str, Any]:
    """The Tune ``param_space`` / ``tune.run`` ``config`` of ``algorithm``: the entries of
    the spec's config dict that differ from the algorithm's defaults (AdaptAtEnd as
    ``on_train_result``), with one ``tune.grid_search`` per grid field. RLlib merges it
    into the default config in each trial."""
    from ray import tune

    first = next(spec.grid_points())
    config = build_config(spec, algorithm, first,
                          on_train_result=AdaptAtEnd(spec.iterations, spec.adaptation))
    defaults = config_class(algorithm)().to_dict()
    space = {k: v for k, v in config.to_dict().items()
             if k == "env" or k not in defaults or defaults[k] != v}
    for field, values in spec.grid.items():
        space[config_key(field)] = (tune.grid_search(list(values)) if isinstance(values, list)
                                    else values.domain())
    return space


class _PerAlgorithm:
    """``tune.sample_from`` function: the value of a field for the trial's algorithm."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def __call__(self, spec: Any) -> Any:
        from metacpo_rllib.experiments.trainable import ALGORITHM_KEY

        return self.values[spec["config"][ALGORITHM_KEY]]


def tuner_param_space(spec: SweepSpec) -> dict[str, Any]:
    """The ``param_space`` of the sweep's one Tuner (trainable ``SweepAlgorithm``): a
    ``grid_search`` over the algorithms under ``algorithm``, the grid / search-space
    fields, and every other field of ``param_space(spec, algorithm)``: as one value where
    the algorithms agree, else the algorithm's own (``tune.sample_from``)."""
    from ray import tune

    from metacpo_rllib.experiments.trainable import ALGORITHM_KEY

    grid_keys = {config_key(field) for field in spec.grid}
    spaces = {a: param_space(spec, a) for a in spec.algorithms}
    defaults = {a: config_class(a)().to_dict() for a in spec.algorithms}
    space: dict[str, Any] = {ALGORITHM_KEY: tune.grid_search(list(spec.algorithms))}
    for key in dict.fromkeys(k for s in spaces.values() for k in s):
        if key in grid_keys:
            continue
        values = {a: spaces[a].get(key, defaults[a].get(key)) for a in spec.algorithms}
        first = next(iter(values.values()))
        space[key] = (first if all(v == first for v in values.values())
                      else tune.sample_from(_PerAlgorithm(values)))
    space.update({k: v for k, v in spaces[spec.algorithms[0]].items() if k in grid_keys})
    return space


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """Sweep-level MLflow params of every trial (besides its training fields): the test
    tasks' limit is the one used (``adaptation.cost_limit``, else the family's)."""
    from metacpo_rllib.envs import make_family

    a = spec.adaptation
    test_limit = (a.cost_limit if a.cost_limit is not None
                  else make_family(spec.family, **spec.env_config).cost_limit_of(a.split))
    return {"iterations": spec.iterations, "test_tasks": a.test_tasks,
            "adapt_steps": a.adapt_steps, "adapt_episodes_per_task": a.episodes_per_task,
            "test_cost_limit": float(test_limit), "test_split": a.split,
            "task_seed": a.task_seed}


def mlflow_callback(spec: SweepSpec, tracking_uri: Optional[str] = None,
                    tags: Optional[Mapping[str, str]] = None, kind: str = "sweep",
                    guard: Optional[Guard] = None) -> MetaCPOMLflowCallback:
    """The MLflow logger callback of a sweep (usable with ``tune.run`` as well)."""
    return MetaCPOMLflowCallback(tracking_uri, experiment_name=spec.experiment_name,
                                 tags={"sweep": spec.name, **(tags or {})},
                                 params=sweep_params(spec), log_checkpoint=spec.log_checkpoint,
                                 kind=kind, guard=guard)


def tune_scheduler(spec: SweepSpec) -> Optional[Any]:
    """The spec's trial scheduler (ASHA on ``training_iteration``), or None."""
    s = spec.scheduler
    if s is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration",
                         max_t=spec.iterations if s.max_t is None else s.max_t,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def progress_reporter(spec: SweepSpec) -> Any:
    """Tune's CLIReporter with return, cost and violation columns (training tasks, then
    the held-out tasks after the last iteration) and the algorithm and grid fields."""
    from ray.tune import CLIReporter

    from metacpo_rllib.experiments.trainable import ALGORITHM_KEY

    params = [ALGORITHM_KEY] + [config_key(k) for k in spec.grid if k != "seed"] + ["seed"]
    return CLIReporter(metric_columns=PROGRESS_COLUMNS,
                       parameter_columns=list(dict.fromkeys(params)),
                       max_report_frequency=30, print_intermediate_tables=True)


@contextlib.contextmanager
def _table_output() -> Iterator[None]:
    """Tune's table output, which takes a CLIReporter's columns (Ray's newer console
    output infers its columns), for the duration of a fit."""
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def make_tuner(spec: SweepSpec, *, tracking_uri: Optional[str] = None,
               storage_path: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
               kind: str = "sweep", guard: Optional[Guard] = None, verbose: int = 1) -> Any:
    """The one Tuner of a sweep: every algorithm × grid point × sample is a trial of
    ``SweepAlgorithm``, run as many at a time as the CPUs (and ``tune.max_concurrent``)
    allow; ``metric`` / ``mode`` are ``METRIC`` / ``MODE``; trials are named
    ``<Algorithm>-<family>-seed<N>``."""
    from ray import tune

    from metacpo_rllib.experiments.trainable import (SweepAlgorithm, trial_dirname,
                                                      trial_run_name)

    guard = guard or Guard(resolve_tracking_uri(tracking_uri))
    storage = storage_path or "ray_results"
    if "://" not in storage:  # a local path; URIs such as s3:// or gs:// pass through as they are
        storage = str(Path(storage).resolve())
    return tune.Tuner(
        SweepAlgorithm,
        param_space=tuner_param_space(spec),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.max_concurrent,
                                    scheduler=tune_scheduler(spec),
                                    trial_name_creator=trial_run_name,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=f"{spec.name}_{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
            stop={"training_iteration": spec.iterations},
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=spec.checkpoint_at_end),
            callbacks=[mlflow_callback(spec, tracking_uri, tags, kind, guard),
                       TrialIterationProgress(spec.iterations, kind)],
            progress_reporter=progress_reporter(spec), verbose=verbose),
    )


class SweepResults(dict):
    """The Results of each algorithm (trial order) of a sweep's one Tuner, whose ResultGrid
    is ``result_grid`` (``result_grid.get_best_result()``: by ``METRIC`` / ``MODE``)."""

    def __init__(self, result_grid: Any, algorithms: list[str]) -> None:
        from metacpo_rllib.experiments.trainable import ALGORITHM_KEY

        super().__init__({a: [] for a in algorithms})
        for result in result_grid:
            self[result.config[ALGORITHM_KEY]].append(result)
        self.result_grid = result_grid


def run_sweep(spec: SweepSpec, *, tracking_uri: Optional[str] = None,
              storage_path: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
              kind: str = "sweep", guard: Optional[Guard] = None,
              verbose: int = 1) -> SweepResults:
    """Fit the sweep's one Tuner (Ray must be initialised; see ``make_tuner``); returns
    the Results grouped by algorithm, with the ResultGrid as ``.result_grid``."""
    tuner = make_tuner(spec, tracking_uri=tracking_uri, storage_path=storage_path,
                       tags=tags, kind=kind, guard=guard, verbose=verbose)
    with _table_output():
        grid = tuner.fit()
    return SweepResults(grid, list(spec.algorithms))


def _last(values: Optional[list]) -> float:
    """The last per-step figure (NaN without any)."""
    return (values or [math.nan])[-1]


def trial_rows(grids: Mapping[str, Any], spec: SweepSpec) -> list[dict[str, Any]]:
    """One summary row per trial: grid values, the env steps it sampled in training, its
    final training figures (learning batches; ``train_eval_cost``: θ's last evaluation on
    the fixed training tasks, when the spec evaluates) and adaptation figures: on the
    evaluation episodes (``test_eval_*``, ``test_within``) when measured, and on the
    learning batches (``test_batch_*``); under ``adapt`` the per-step means."""
    rows = []
    for algorithm, grid in grids.items():
        for result in grid:
            metrics = result.metrics or {}
            m = metrics.get("metacpo", {})
            report = adaptation_report(metrics) or {}
            evaluation = report.get("eval") or {}
            df = result.metrics_dataframe
            steps = (int(df["metacpo/env_steps_sampled"].sum())
                     if df is not None and "metacpo/env_steps_sampled" in df else None)
            row = {"algorithm": algorithm, "trial": Path(result.path).name,
                   **{k: result.config.get(config_key(k)) for k in spec.grid},
                   "iterations": metrics.get("training_iteration"), "env_steps": steps,
                   "train_return": m.get("post_return_mean", math.nan),
                   "train_cost": m.get("post_cost_mean", math.nan),
                   "train_eval_cost": (metrics.get("evaluation") or {}).get("mean_cost",
                                                                             math.nan),
                   "test_eval_return": _last(evaluation.get("mean_return")),
                   "test_eval_cost": _last(evaluation.get("mean_cost")),
                   "test_within": _last(evaluation.get("within_limit_rate")),
                   "test_batch_return": _last(report.get("mean_return")),
                   "test_batch_cost": _last(report.get("mean_cost")),
                   "error": None if result.error is None else type(result.error).__name__,
                   "adapt": {k: report[k] for k in ("steps", "mean_return", "mean_cost",
                                                    "violation_rate", "eval") if k in report}}
            rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of ``trial_rows``."""
    if not rows:
        return "(no trials)"
    keys = [k for k in rows[0] if k not in ("trial", "adapt")]

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    widths = {k: max(len(k), *(len(cell(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.rjust(widths[k]) for k in keys)]
    lines += ["  ".join(cell(r[k]).rjust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)
