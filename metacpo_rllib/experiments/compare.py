"""The four-algorithm comparison: one sweep (same seeds, test tasks), then figure, table, JSON."""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from metacpo_rllib import provenance
from metacpo_rllib.experiments import tracking
from metacpo_rllib.evaluation_stats import (across_seeds, calibration_markdown,
                                             calibration_table, format_pm)
from metacpo_rllib.experiments.spec import ALGORITHM_NAMES, Adaptation, SweepSpec, validate_spec


def compare_spec(family: str, *, seeds: Sequence[int] = (0, 1, 2), iterations: int = 3,
                 test_tasks: int = 2, adapt_steps: int = 1,
                 training: Optional[Mapping[str, Any]] = None,
                 env_config: Optional[Mapping[str, Any]] = None,
                 test_cost_limit: Optional[float] = None, task_seed: int = 12345,
                 max_concurrent: Optional[int] = None, eval_episodes: int = 20,
                 split: str = "test", evaluation: Optional[Mapping[str, int]] = None
                 ) -> SweepSpec:
    """The validated spec of a comparison: all four algorithms, a grid over ``seeds``;
    adaptation on ``split`` with ``eval_episodes`` evaluation episodes per task and step;
    ``evaluation``: MetaCPOConfig.evaluation fields (θ on fixed training tasks)."""
    spec = SweepSpec(
        name=f"compare-{family}", algorithms=list(ALGORITHM_NAMES), family=family,
        iterations=iterations, env_config=dict(env_config or {}),
        training=dict(training or {}), grid={"seed": list(seeds)},
        adaptation=Adaptation(test_tasks=test_tasks, adapt_steps=adapt_steps,
                              cost_limit=test_cost_limit, task_seed=task_seed,
                              eval_episodes=eval_episodes, split=split),
        evaluation=dict(evaluation or {}), max_concurrent=max_concurrent)
    validate_spec(spec)
    return spec


# -- collecting the numbers ---------------------------------------------------------------------
def collect_runs(grids: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per algorithm, per seed (sorted): the training curves (post-adaptation return and
    cost per iteration; = pre-adaptation for CPO / TRPO) and the adaptation report."""
    from metacpo_rllib.experiments.callbacks import adaptation_report
    from metacpo_rllib.evaluation_stats import ledger_entries

    runs: dict[str, list[dict[str, Any]]] = {}
    for algorithm, grid in grids.items():
        rows = []
        for result in grid:
            if result.error is not None:
                continue
            df = result.metrics_dataframe.sort_values("training_iteration")
            report = adaptation_report(result.metrics or {})
            row = {
                "seed": result.config.get("seed"), "trial": Path(result.path).name,
                "iteration": df["training_iteration"].astype(int).tolist(),
                "return": df["metacpo/post_return_mean"].astype(float).tolist(),
                "cost": df["metacpo/post_cost_mean"].astype(float).tolist(),
                "pre_return": df["metacpo/pre_return_mean"].astype(float).tolist(),
                "pre_cost": df["metacpo/pre_cost_mean"].astype(float).tolist(),
                "train_limit": float(df["metacpo/cost_limit_mean"].mean()),
                "env_steps": int(df["metacpo/env_steps_sampled"].sum()),
                "train_time_s": float(df["time_total_s"].iloc[-1]) if len(df) else math.nan,
                "adapt": None, "test_limit": math.nan,
                "train_eval": training_evaluation(df),
            }
            if report:
                row["adapt"] = {k: report[k] for k in ("steps", "mean_return", "mean_cost",
                                                        "violation_rate")}
                row["adapt"]["task_cost"] = [t["cost"] for t in report["tasks"]]
                row["adapt"]["task_return"] = [t["return"] for t in report["tasks"]]
                row["adapt"]["time_s"] = report.get("time_s")
                if "eval" in report:  # evaluation episodes, apart from the learning batches
                    row["adapt"]["eval"] = report["eval"]
                    for key in ("return", "cost", "cost_se", "cost_ucb"):
                        row["adapt"][f"task_eval_{key}"] = [t["eval"][key]
                                                            for t in report["tasks"]]
                    row["adapt"]["ledger"] = ledger_entries(report)
                row["test_limit"] = float(np.mean([t["cost_limit"] for t in report["tasks"]]))
            rows.append(row)
        runs[algorithm] = sorted(rows, key=lambda r: (r["seed"] is None, r["seed"]))
    return runs


#: The training evaluation's figures kept per run (``algo.train()`` result ``evaluation``).
TRAIN_EVAL_KEYS = ("mean_return", "mean_cost", "cost_se", "cost_ucb", "cost_limit",
                   "meets_limit", "certified", "within_limit_rate", "certified_rate")


def training_evaluation(df: Any) -> Optional[dict[str, float]]:
    """The last evaluation of θ on the fixed training tasks in a trial's results (the
    ``evaluation/*`` columns; ``iteration`` = when), or None when the trial never
    evaluated (no ``evaluation.evaluation_interval`` in the spec)."""
    column = "evaluation/mean_cost"
    if column not in df.columns or df[column].isna().all():
        return None
    last = df[df[column].notna()].iloc[-1]
    return {"iteration": int(last["training_iteration"]),
            **{k: float(last[f"evaluation/{k}"]) for k in TRAIN_EVAL_KEYS
               if f"evaluation/{k}" in df.columns}}


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and std (ddof = 1) over seeds; one seed has no std (NaN)."""
    return across_seeds(values)


#: Evaluation figures of the summary: (name, key of the report's ``eval``).
EVAL_FIGURES = (("eval_return", "mean_return"), ("eval_cost", "mean_cost"),
                ("within_limit_rate", "within_limit_rate"), ("certified_rate", "certified_rate"))


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per algorithm: mean ± std over seeds of the post-adaptation (last step) figures on
    the held-out tasks: the learning batches' return, cost and violation rate and, when
    measured, the evaluation episodes' return and cost and the fractions of tasks within
    the limit and certified; plus the calibration table of all seeds' adaptation steps."""
    summary = {}
    for algorithm, seeds in runs.items():
        adapted = [s["adapt"] for s in seeds if s["adapt"]]
        summary[algorithm] = {
            "seeds": [s["seed"] for s in seeds if s["adapt"]],
            **{name: _mean_std([a[key][-1] for a in adapted])
               for name, key in (("return", "mean_return"), ("cost", "mean_cost"),
                                 ("violation_rate", "violation_rate"))},
        }
        evaluated = [a["eval"] for a in adapted if a.get("eval")]
        if evaluated:
            summary[algorithm].update({name: _mean_std([e[key][-1] for e in evaluated])
                                       for name, key in EVAL_FIGURES})
            summary[algorithm]["calibration"] = calibration_table(
                [entry for a in adapted for entry in a.get("ledger", [])])
        trained = [s["train_eval"] for s in seeds if s.get("train_eval")]
        if trained:
            summary[algorithm]["train_eval"] = {
                key: _mean_std([t[key] for t in trained])
                for key in ("mean_return", "mean_cost", "cost_ucb", "meets_limit",
                            "certified")}
    return summary


def _pm(stat: Mapping[str, float], digits: int = 2) -> str:
    return format_pm(stat, digits)


def markdown_report(spec: SweepSpec, runs: Mapping[str, Sequence[Mapping[str, Any]]],
                    summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The comparison table (mean ± std over seeds) plus the per-seed numbers."""
    limits = [s["test_limit"] for seeds in runs.values() for s in seeds if s["adapt"]]
    train = [s["train_limit"] for seeds in runs.values() for s in seeds]
    a = spec.adaptation
    lines = [
        f"# {spec.family}: Meta-CPO vs Meta-TRPO, CPO, TRPO", "",
        f"{spec.iterations} training iterations at the training cost limit "
        f"(h = {np.nanmean(train) if train else math.nan:.2f}), then {a.adapt_steps} "
        f"adaptation step(s) on {a.test_tasks} held-out `{a.split}` tasks at the limit "
        f"(h = {np.nanmean(limits) if limits else math.nan:.2f}); task seed {a.task_seed}, "
        f"training seeds {spec.grid.get('seed')}.",
        "Post-adaptation return and cost are means over the test tasks; the violation rate "
        "is the fraction of test tasks whose mean episode cost exceeds the limit. "
        "Mean ± std (ddof=1) over seeds (no ± with one seed).", "",
    ]
    lines += _training_evaluation_lines(runs, summary)
    if any("eval_cost" in s for s in summary.values()):
        lines += [
            f"**Evaluation episodes** ({a.eval_episodes} fresh episodes per task and step, "
            "apart from the learning batches; the same episodes' seeds for every algorithm). "
            "*Within* = evaluation mean ≤ h; *certified* = one-sided 95% t upper bound ≤ h "
            "(fractions of tasks).", "",
            "| algorithm | return | cost | within limit | certified | seeds |",
            "|---|---:|---:|---:|---:|---:|"]
        for algorithm, s in summary.items():
            if "eval_cost" in s:
                lines.append(f"| {algorithm} | {_pm(s['eval_return'])} | {_pm(s['eval_cost'])} "
                             f"| {_pm(s['within_limit_rate'])} | {_pm(s['certified_rate'])} | "
                             f"{len(s['seeds'])} |")
        lines += ["", "**Learning batches** (the episodes each step learned from)", ""]
    lines += ["| algorithm | return | cost | violation rate | seeds |",
              "|---|---:|---:|---:|---:|"]
    for algorithm, s in summary.items():
        lines.append(f"| {algorithm} | {_pm(s['return'])} | {_pm(s['cost'])} | "
                     f"{_pm(s['violation_rate'])} | {len(s['seeds'])} |")
    for algorithm, s in summary.items():
        if s.get("calibration"):
            lines += ["", f"## Calibration of the cost model: {algorithm}", "",
                      "Predicted change of the mean episode cost (bᵀx × accepted line-search "
                      "fraction) against the change realised on the evaluation episodes, per "
                      "adaptation step, all seeds and tasks.", "",
                      calibration_markdown(s["calibration"]).rstrip()]
    lines += ["", "## Per seed (post-adaptation)", "",
              "| algorithm | seed | return | cost | violation rate |", "|---|---:|---:|---:|---:|"]
    for algorithm, seeds in runs.items():
        for s in seeds:
            if s["adapt"]:
                r, c, v = (s["adapt"][k][-1] for k in ("mean_return", "mean_cost",
                                                         "violation_rate"))
                lines.append(f"| {algorithm} | {s['seed']} | {r:.2f} | {c:.2f} | {v:.2f} |")
    return "\n".join(lines) + "\n"


def _training_evaluation_lines(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                               summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The 'training meets h' table: θ's last evaluation on the fixed training tasks."""
    if not any("train_eval" in s for s in summary.values()):
        return []
    first = next(t for seeds in runs.values() for t in (s.get("train_eval") for s in seeds) if t)
    lines = [f"**Training meets its limit?** θ evaluated at iteration {first['iteration']} "
             "on fixed training tasks (evaluation episodes, h = "
             f"{first.get('cost_limit', math.nan):.2f}); *meets* = task-averaged evaluation cost "
             "≤ h, *certified* = its one-sided 95% upper bound ≤ h (fractions of seeds).", "",
             "| algorithm | return | cost | cost UCB | meets h | certified | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for algorithm, s in summary.items():
        t = s.get("train_eval")
        if t:
            n = sum(1 for r in runs[algorithm] if r.get("train_eval"))
            lines.append(f"| {algorithm} | {_pm(t['mean_return'])} | {_pm(t['mean_cost'])} | "
                         f"{_pm(t['cost_ucb'])} | {_pm(t['meets_limit'])} | "
                         f"{_pm(t['certified'])} | {n} |")
    return lines + [""]


# -- the whole command ----------------------------------------------------------------------------
def train_cost_limit(spec: SweepSpec) -> Optional[float]:
    """The training tasks' limit of a comparison (``training.train_cost_limit``, else the
    family's); None where it varies over the grid."""
    from metacpo_rllib.envs import make_family

    if "train_cost_limit" in spec.grid:
        return None
    limit = spec.training.get("train_cost_limit")
    if limit is None:
        limit = make_family(spec.family, **spec.env_config).cost_limit_of("train")
    return float(limit)


def summary_metrics(summary: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The comparison as metrics of its parent run, ``<algorithm>/<figure>`` (means over
    seeds, post-adaptation on the held-out tasks): the four algorithms side by side in the
    run's metrics table (and as columns the runs table can show)."""
    names = ("return", "cost", "violation_rate") + tuple(name for name, _ in EVAL_FIGURES)
    return {f"{algorithm}/{name}": float(s[name]["mean"])
            for algorithm, s in summary.items() for name in names
            if name in s and math.isfinite(s[name]["mean"])}


#: The longest description MLflow keeps (a tag value).
NOTE_LIMIT = 8000


def parent_note(run_id: str, table: str) -> str:
    """The comparison run's MLflow description (markdown): the comparison figure (served
    by the tracking server's ``get-artifact`` endpoint) above the comparison table."""
    figure = f"get-artifact?path=comparison%2Fcomparison.png&run_uuid={run_id}"
    note = f"![comparison figure]({figure})\n\n{table}"
    if len(note) > NOTE_LIMIT:  # MLflow's limit on a tag value; the whole table is an artifact
        note = note[:note.rfind("\n", 0, NOTE_LIMIT - 80)] + (
            "\n\n(cut here: the whole table is the artifact comparison/comparison.md)")
    return note


def run_compare(spec: SweepSpec, out_dir: str | Path, *, tracking_uri: Optional[str] = None,
                storage_path: Optional[str] = None, verbose: int = 1,
                command_line: Optional[str] = None) -> dict[str, Any]:
    """Run the comparison sweep (Ray must be initialised) under a parent MLflow run, write
    ``comparison.png`` / ``.md`` / ``.json`` to ``out_dir`` and log them to the parent run.
    Returns the raw numbers (what ``comparison.json`` holds). ``command_line`` is recorded
    as the command that made them (default: this process's arguments)."""
    from mlflow.tracking import MlflowClient

    from metacpo_rllib.experiments.plots import comparison_figure
    from metacpo_rllib.experiments.sweep import run_sweep, sweep_params

    uri = tracking.resolve_tracking_uri(tracking_uri)
    guard = tracking.Guard(uri)  # one warning for the whole comparison
    reason = tracking.check_reachable(uri)
    if reason:
        guard.disable(reason)
    client = MlflowClient(tracking_uri=uri)

    def start_parent() -> str:
        experiment_id = tracking.ensure_experiment(client, spec.experiment_name, uri)
        tags = {"kind": "comparison", "family": spec.family,
                "git_commit": tracking.git_commit(),
                "mlflow.source.git.commit": tracking.git_commit()}
        return client.create_run(experiment_id, run_name=f"comparison-{spec.family}",
                                 tags=tags).info.run_id

    parent = guard.call(start_parent)
    recorder = tracking.RunRecorder(client, parent or "", guard)
    recorder.log_params({"family": spec.family, "algorithms": spec.algorithms,
                         "seeds": spec.grid.get("seed"), "training": spec.training,
                         "env_config": spec.env_config, "iterations": spec.iterations,
                         "test_tasks": spec.adaptation.test_tasks,
                         "adapt_steps": spec.adaptation.adapt_steps,
                         "train_cost_limit": train_cost_limit(spec),
                         "test_cost_limit": sweep_params(spec)["test_cost_limit"],
                         "task_seed": spec.adaptation.task_seed})
    status = "FAILED"
    started, started_utc = time.perf_counter(), provenance.utc_now()
    try:
        grids = run_sweep(spec, tracking_uri=uri, storage_path=storage_path,
                          tags={"mlflow.parentRunId": parent} if parent else None,
                          kind="compare", guard=guard, verbose=verbose)
        runs = collect_runs(grids)
        summary = summarize(runs)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"figure": out / "comparison.png", "table": out / "comparison.md",
                 "json": out / "comparison.json"}
        comparison_figure(runs, files["figure"], title=f"{spec.family}: training and "
                          "test-time adaptation (mean ± std over seeds)")
        files["table"].write_text(markdown_report(spec, runs, summary))
        data = {"family": spec.family, "iterations": spec.iterations,
                "seeds": spec.grid.get("seed"), "adaptation": vars(spec.adaptation),
                "training": spec.training, "env_config": spec.env_config,
                "summary": summary, "runs": runs,
                "provenance": {"commit": tracking.git_commit(), "machine": provenance.machine(),
                               "command": command_line or shlex.join(
                                   [Path(sys.argv[0]).name, *sys.argv[1:]]),
                               "started_utc": started_utc, "finished_utc": provenance.utc_now(),
                               "wall_s": time.perf_counter() - started},
                "mlflow": {"tracking_uri": uri, "experiment": spec.experiment_name,
                           "parent_run_id": parent}}
        files["json"].write_text(json.dumps(data, indent=2, default=tracking.plain) + "\n")
        for path in files.values():
            guard.call(client.log_artifact, parent, str(path), "comparison")
        if parent:  # the run's description: the figure and the table, on its first page
            guard.call(client.set_tag, parent, "mlflow.note.content",
                       parent_note(parent, files["table"].read_text()))
            recorder.log_summary(summary_metrics(summary))
        status = "FINISHED"
        return {**data, "files": {k: str(v) for k, v in files.items()}}
    finally:
        guard.call(client.set_terminated, parent, status)
