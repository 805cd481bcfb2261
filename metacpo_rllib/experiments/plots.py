"""Figures: one run's training / adaptation curves, and the four-algorithm comparison."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from metacpo_rllib.algorithms import algorithm_info


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    return plt


def _style(algorithm: str) -> dict[str, Any]:
    """The algorithm's fixed colour, marker and line style (``algorithms.ALGORITHM_TABLE``)."""
    try:
        return algorithm_info(algorithm).style()
    except KeyError:
        return {"color": None, "marker": "o", "linestyle": "-", "label": algorithm}


def _limit_line(ax: Any, value: float, label: str) -> None:
    if value is not None and not math.isnan(value):
        ax.axhline(value, color="crimson", linestyle="--", linewidth=1.2, label=label)


def run_figure(history: Sequence[Mapping[str, float]], report: Optional[Mapping[str, Any]],
               path: str | Path) -> Path:
    """Return and cost per training iteration (pre / post adaptation, train limit) and,
    with an ``adapt`` report, per adaptation step on the test tasks (test limit)."""
    plt = _pyplot()
    rows = 2 if report else 1
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.6 * rows), squeeze=False)
    it = [h["iteration"] for h in history]
    for ax, what in zip(axes[0], ("return", "cost")):
        ax.plot(it, [h[f"pre_{what}_mean"] for h in history], "o-", label="pre-adaptation")
        ax.plot(it, [h[f"post_{what}_mean"] for h in history], "s-", label="post-adaptation")
        if what == "cost" and history:
            _limit_line(ax, float(np.nanmean([h["cost_limit_mean"] for h in history])),
                        "train limit")
        ax.set(xlabel="training iteration", ylabel=f"mean episode {what}",
               title=f"training {what}")
    if report:
        limit = float(np.mean([t["cost_limit"] for t in report["tasks"]]))
        for ax, what, key in zip(axes[1], ("return", "cost"), ("mean_return", "mean_cost")):
            ax.plot(report["steps"], report[key], "o-", color="tab:green", label="test tasks")
            if what == "cost":
                _limit_line(ax, limit, "test limit")
            ax.set(xlabel="adaptation step", ylabel=f"mean episode {what}",
                   title=f"test-time adaptation: {what}")
    _finish(fig, axes, path)
    plt.close(fig)
    return Path(path)


def _finish(fig: Any, axes: Any, path: str | Path, title: str = "") -> None:
    """Grid, legends and integer x ticks on every panel; save."""
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _mean_std(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over seeds, cut to the shortest curve."""
    n = min(len(c) for c in curves)
    values = np.array([list(c)[:n] for c in curves], dtype=float)
    return np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def _draw_training(axes: Sequence[Any], runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Return and cost per training iteration (mean over seeds, band = ± std), train limit."""
    limits = []
    for algorithm, seeds in runs.items():
        if not seeds:
            continue
        x = np.asarray(seeds[0]["iteration"][:min(len(s["iteration"]) for s in seeds)])
        for ax, what in zip(axes, ("return", "cost")):
            mean, std = _mean_std([s[what] for s in seeds])
            (line,) = ax.plot(x, mean, markersize=4, **_style(algorithm))
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        limits += [s["train_limit"] for s in seeds]
    _limit_line(axes[1], float(np.mean(limits)) if limits else math.nan, "train limit")
    for ax, what in zip(axes, ("return", "cost")):
        ax.set(xlabel="training iteration", ylabel=f"mean episode {what}",
               title=f"{what} during training")


def _within_limit(seed: Mapping[str, Any]) -> list[float]:
    if seed["adapt"].get("eval"):
        return seed["adapt"]["eval"]["within_limit_rate"]
    return [1.0 - v for v in seed["adapt"]["violation_rate"]]


def _adapt_curve(seed: Mapping[str, Any], key: str) -> list[float]:
    """A per-step adaptation figure: from the evaluation episodes when measured, else from
    the learning batches."""
    adapt = seed["adapt"]
    return adapt["eval"][key] if adapt.get("eval") else adapt[key]


def _draw_adaptation(axes: Sequence[Any], runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Per adaptation step on the test tasks (mean over seeds, bars = ± std): return, cost
    (test limit dashed) and, with a third axis, the fraction of tasks within the limit;
    on the evaluation episodes when the runs have them, else on the learning batches."""
    limits = []
    for i, (algorithm, seeds) in enumerate(runs.items()):
        adapted = [s for s in seeds if s.get("adapt")]
        if not adapted:
            continue
        steps = adapted[0]["adapt"]["steps"]
        curves = (lambda s: _adapt_curve(s, "mean_return"),
                  lambda s: _adapt_curve(s, "mean_cost"), _within_limit)
        for ax, curve in zip(axes, curves):
            mean, std = _mean_std([curve(s) for s in adapted])
            dodge = 0.04 * (i - (len(runs) - 1) / 2)  # error bars side by side
            ax.errorbar(np.asarray(steps[:len(mean)]) + dodge, mean, yerr=std, capsize=3,
                        **_style(algorithm))
        limits += [s["test_limit"] for s in adapted]
    _limit_line(axes[1], float(np.mean(limits)) if limits else math.nan, "test limit")
    names = ("return on held-out test tasks", "cost on held-out test tasks",
             "test tasks within the limit")
    for ax, name in zip(axes, names):
        ylabel = "fraction of tasks" if ax is axes[-1] and len(axes) == 3 else \
            "mean episode " + name.split()[0]
        ax.set(xlabel="adaptation step", ylabel=ylabel, title=name)
    if len(axes) == 3:
        axes[2].set_ylim(-0.05, 1.05)


def _figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str,
            rows: Sequence[Callable[[Any, Any], None]], columns: int,
            size: tuple[float, float]) -> Path:
    """A figure with one row of ``columns`` panels per drawing function, saved to ``path``."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), columns, figsize=size, squeeze=False)
    for draw, row in zip(rows, axes):
        draw(row, runs)
    _finish(fig, axes, path, title)
    plt.close(fig)
    return Path(path)


def comparison_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                      title: str = "") -> Path:
    """2 x 2 panels, one line per algorithm (mean over seeds, band = ± std): training
    return / cost per iteration, test return / cost per adaptation step; limits dashed.

    ``runs[algorithm]`` is a list (one per seed) of ``{"iteration", "return", "cost",
    "train_limit", "adapt": {"steps", "mean_return", "mean_cost", "violation_rate"},
    "test_limit"}``.
    """
    return _figure(runs, path, title, (_draw_training, _draw_adaptation), 2, (11, 7.5))


def training_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                    title: str = "") -> Path:
    """Training return and cost per iteration, one line per algorithm (± std over seeds)."""
    return _figure(runs, path, title, (_draw_training,), 2, (11, 3.8))


def adaptation_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                      title: str = "") -> Path:
    """Test-task return, cost and fraction within the limit per adaptation step."""
    return _figure(runs, path, title, (_draw_adaptation,), 3, (15, 3.8))
