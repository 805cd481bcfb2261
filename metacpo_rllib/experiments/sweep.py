"""Run a SweepSpec with Ray Tune: one Tuner per algorithm, all logging to one MLflow experiment."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from metacpo_rllib.experiments.callbacks import (AdaptAtEnd, MetaCPOMLflowCallback,
                                                  adaptation_report)
from metacpo_rllib.experiments.progress import TrialIterationProgress
from metacpo_rllib.experiments.spec import SweepSpec, build_config, config_class, config_key
from metacpo_rllib.experiments.tracking import Guard, resolve_tracking_uri


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
        space[config_key(field)] = tune.grid_search(list(values))
    return space


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """Sweep-level MLflow params of every trial (besides its training fields)."""
    a = spec.adaptation
    return {"iterations": spec.iterations, "test_tasks": a.test_tasks,
            "adapt_steps": a.adapt_steps, "adapt_episodes_per_task": a.episodes_per_task,
            "test_cost_limit": a.cost_limit, "task_seed": a.task_seed}


def mlflow_callback(spec: SweepSpec, tracking_uri: Optional[str] = None,
                    tags: Optional[Mapping[str, str]] = None, kind: str = "sweep",
                    guard: Optional[Guard] = None) -> MetaCPOMLflowCallback:
    """The MLflow logger callback of a sweep (usable with ``tune.run`` as well)."""
    return MetaCPOMLflowCallback(tracking_uri, experiment_name=spec.experiment_name,
                                 tags={"sweep": spec.name, **(tags or {})},
                                 params=sweep_params(spec), log_checkpoint=spec.log_checkpoint,
                                 kind=kind, guard=guard)


def run_sweep(spec: SweepSpec, *, tracking_uri: Optional[str] = None,
              storage_path: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
              kind: str = "sweep", guard: Optional[Guard] = None,
              verbose: int = 1) -> dict[str, Any]:
    """Fit one Tuner per algorithm of ``spec`` (Ray must be initialised); returns the
    ResultGrid of each algorithm. All Tuners share one tracking Guard (one warning)."""
    from ray import tune

    guard = guard or Guard(resolve_tracking_uri(tracking_uri))
    storage = storage_path or "ray_results"
    if "://" not in storage:  # a local path; URIs such as s3:// or gs:// pass through as they are
        storage = str(Path(storage).resolve())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    grids = {}
    for algorithm in spec.algorithms:
        tuner = tune.Tuner(
            algorithm,
            param_space=param_space(spec, algorithm),
            tune_config=tune.TuneConfig(num_samples=spec.num_samples,
                                        max_concurrent_trials=spec.max_concurrent),
            run_config=tune.RunConfig(
                name=f"{spec.name}_{algorithm}_{stamp}", storage_path=storage,
                stop={"training_iteration": spec.iterations},
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_at_end=spec.checkpoint_at_end),
                callbacks=[mlflow_callback(spec, tracking_uri, tags, kind, guard),
                           TrialIterationProgress(spec.iterations, f"{kind} {algorithm}")],
                verbose=verbose),
        )
        grids[algorithm] = tuner.fit()
    return grids


def trial_rows(grids: Mapping[str, Any], spec: SweepSpec) -> list[dict[str, Any]]:
    """One summary row per trial: grid values, final training and adaptation numbers
    (and under ``adapt`` the per-step means of the adaptation report)."""
    rows = []
    for algorithm, grid in grids.items():
        for result in grid:
            metrics = result.metrics or {}
            m = metrics.get("metacpo", {})
            report = adaptation_report(metrics) or {}
            row = {"algorithm": algorithm, "trial": Path(result.path).name,
                   **{k: result.config.get(config_key(k)) for k in spec.grid},
                   "iterations": metrics.get("training_iteration"),
                   "train_return": m.get("post_return_mean", math.nan),
                   "train_cost": m.get("post_cost_mean", math.nan),
                   "test_return": (report.get("mean_return") or [math.nan])[-1],
                   "test_cost": (report.get("mean_cost") or [math.nan])[-1],
                   "test_violation": (report.get("violation_rate") or [math.nan])[-1],
                   "error": None if result.error is None else type(result.error).__name__,
                   "adapt": {k: report[k] for k in ("steps", "mean_return", "mean_cost",
                                                    "violation_rate") if k in report}}
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
