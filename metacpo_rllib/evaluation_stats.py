"""Statistics of evaluation episodes (pure numpy): mean episode cost, its standard error and a
one-sided 95% upper confidence bound; summaries across seeds; the calibration ledger's table.

Conventions. A *cost* is an episode cost (the sum of the per-step ``info["cost"]``, the units
of the cost limit h). "Within the limit" compares the evaluation *mean* with h; "certified"
compares the *upper bound* with h. Across training seeds a figure is mean ± std (ddof = 1);
a single seed has no std (NaN, printed without ±).

Why a Student-t bound. With n = 20 episodes per task the t interval is the standard choice,
and it is the exact bound for normal costs; the percentile bootstrap, the alternative, is
known to under-cover at this n for skewed data (it never reaches beyond the largest observed
cost). Safety costs are bursty: most episodes cost 0 and an excursion costs tens. The t bound
widens with the spread of the costs, except in one case: when every episode has the same cost
(typically all zero) the sample variance is 0 and the t interval has zero width, i.e. it
would claim certainty from n episodes. That case is handled explicitly: if no episode cost
more than the mean, an episode costlier than that still has a probability of up to
p = 1 − 0.05^(1/n) at 95% confidence (the exact binomial bound, "rule of three": p ≈ 3/n),
and such an episode costs at most ``cost_bound`` (the largest possible episode cost: the
episode length when each step costs 0 or 1). The bound is then mean + p·(cost_bound − mean);
without a ``cost_bound`` it is +inf (nothing can be certified). This is conservative: n
episodes without any cost certify only limits above ≈ (3/n)·cost_bound.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

#: One-sided confidence level of every upper bound here.
CONFIDENCE = 0.95

#: t quantiles t_{0.95}(df) for df = 1..30 (beyond: the Cornish-Fisher expansion, < 1e-6 off).
_T95 = (6.313752, 2.919986, 2.353363, 2.131847, 2.015048, 1.943180, 1.894579, 1.859548,
        1.833113, 1.812461, 1.795885, 1.782288, 1.770933, 1.761310, 1.753050, 1.745884,
        1.739607, 1.734064, 1.729133, 1.724718, 1.720743, 1.717144, 1.713872, 1.710882,
        1.708141, 1.705618, 1.703288, 1.701131, 1.699127, 1.697261)
_Z95 = 1.6448536269514722


def t95(df: float) -> float:
    """The 0.95 quantile of Student's t with ``df`` degrees of freedom (df >= 1; non-integer
    df, as from Welch-Satterthwaite, is rounded down: a slightly wider bound)."""
    if not df >= 1:
        raise ValueError(f"df: expected >= 1, got {df}")
    if df <= len(_T95):
        return _T95[int(math.floor(df)) - 1]
    z, v = _Z95, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def no_excess_probability_bound(n: int) -> float:
    """95% upper bound on the probability of an event never seen in ``n`` trials:
    1 − 0.05^(1/n) (exact binomial; ≈ 3/n)."""
    return 1.0 - (1.0 - CONFIDENCE) ** (1.0 / n) if n >= 1 else 1.0


@dataclasses.dataclass(frozen=True)
class CostStats:
    """Mean episode cost over ``n`` episodes with its standard error and 95% upper bound."""

    n: int
    mean: float
    std: float   # sample std (ddof = 1); NaN for n < 2
    se: float    # std / sqrt(n); NaN for n < 2
    ucb: float   # one-sided 95% upper confidence bound on the expected episode cost

    def within(self, limit: float) -> bool:
        """The evaluation mean is at most ``limit`` (False when there is no data)."""
        return bool(self.mean <= limit)

    def certified(self, limit: float) -> bool:
        """The 95% upper bound is at most ``limit``."""
        return bool(self.ucb <= limit)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


_NO_DATA = CostStats(0, math.nan, math.nan, math.nan, math.nan)


def _degenerate_ucb(mean: float, n: int, cost_bound: Optional[float]) -> float:
    """Upper bound when no episode cost more than ``mean`` (see the module docstring)."""
    if cost_bound is None or not math.isfinite(cost_bound):
        return math.inf
    return mean + no_excess_probability_bound(n) * max(0.0, float(cost_bound) - mean)


def cost_stats(costs: Iterable[float], cost_bound: Optional[float] = None) -> CostStats:
    """Mean, std, standard error and one-sided 95% t upper bound of episode ``costs``.

    A NaN cost (an episode that went wrong) makes every figure NaN. Zero variance (all costs
    equal) or a single episode: the bound of the module docstring, from ``cost_bound`` (the
    largest possible episode cost; None: +inf).
    """
    x = np.asarray(list(costs), dtype=np.float64).reshape(-1)
    n = int(x.size)
    if n == 0 or not np.all(np.isfinite(x)):
        return dataclasses.replace(_NO_DATA, n=n)
    mean = float(x.mean())
    if n == 1:
        return CostStats(1, mean, math.nan, math.nan, _degenerate_ucb(mean, 1, cost_bound))
    std = float(x.std(ddof=1))
    se = std / math.sqrt(n)
    if std == 0.0:
        return CostStats(n, mean, 0.0, 0.0, _degenerate_ucb(mean, n, cost_bound))
    return CostStats(n, mean, std, se, mean + t95(n - 1) * se)


def pooled_cost_stats(groups: Sequence[Iterable[float]],
                      cost_bound: Optional[float] = None) -> CostStats:
    """Statistics of the task-averaged cost (the mean over groups of each group's mean),
    from each group's own episodes: se = sqrt(Σ se_i²) / G, and the upper bound
    mean + sqrt(Σ w_i²) / G with w_i = ucb_i − mean_i each group's own half-width (for
    groups with a t bound this is the t bound of the average; a group without variance
    enters with the half-width of the module docstring, so the pooled bound is never
    narrower than its groups allow). ``n`` is the total number of episodes; groups
    without data are left out."""
    stats = [cost_stats(g, cost_bound) for g in groups]
    stats = [s for s in stats if s.n > 0 and not math.isnan(s.mean)]
    if not stats:
        return _NO_DATA
    k = len(stats)
    mean = float(np.mean([s.mean for s in stats]))
    ses = [s.se for s in stats]
    se = math.nan if any(math.isnan(x) for x in ses) else math.sqrt(sum(x * x for x in ses)) / k
    widths = np.array([s.ucb - s.mean for s in stats])
    ucb = math.inf if not np.all(np.isfinite(widths)) else \
        mean + float(np.sqrt((widths ** 2).sum())) / k
    return CostStats(sum(s.n for s in stats), mean, math.nan, se, ucb)


#: Largest cost of one env step in every family (``info["cost"]`` is a 0/1 indicator).
MAX_STEP_COST = 1.0


def episode_cost_bound(results: Iterable[Optional[Mapping[str, Any]]]) -> float:
    """Largest possible episode cost given evaluation results (each with per-episode
    ``lengths`` and ``max_step_costs``; None entries are skipped): the longest episode times
    the largest per-step cost (:data:`MAX_STEP_COST`, or more if seen); NaN without
    episodes. The ``cost_bound`` of :func:`cost_stats`."""
    results = [r for r in results if r]
    lengths = [n for r in results for n in r["lengths"]]
    steps = [c for r in results for c in r["max_step_costs"]]
    if not lengths:
        return math.nan
    return float(max(lengths)) * max([MAX_STEP_COST, *[c for c in steps if math.isfinite(c)]])


# -- across seeds -------------------------------------------------------------------------------
def across_seeds(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample std (ddof = 1) over seeds of one figure; NaN values are left out.
    One seed: std NaN (there is no spread to show); none: mean NaN too."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def format_pm(stat: Mapping[str, float], digits: int = 2) -> str:
    """``mean ± std``; just ``mean`` without a std (one seed); ``n/a`` without data."""
    mean, std = stat.get("mean", math.nan), stat.get("std", math.nan)
    if mean is None or math.isnan(mean):
        return "n/a"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# -- calibration ledger -------------------------------------------------------------------------
def ledger_entries(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The calibration entries of an ``algo.adapt`` report (every task's ``ledger``), each
    with its task id added."""
    return [{**entry, "task_id": task.get("task_id")}
            for task in report.get("tasks", []) for entry in task.get("ledger", [])]


def calibration_table(entries: Iterable[Mapping[str, Any]], eps: float = 1e-9
                      ) -> dict[str, dict[str, float]]:
    """Per CPO case (and ``"all"``): how the predicted cost change of a step compares with the
    change realised on evaluation episodes.

    Each entry needs ``case``, ``predicted_cost_change`` (bᵀx times the accepted line-search
    fraction) and ``realised_cost_change`` (evaluation mean cost after the step minus before).
    Entries with a NaN prediction (unconstrained steps have no cost model) or a NaN realised
    change are left out. Columns: ``n``; ``sign_agreement``: the fraction of entries with
    both changes non-zero whose signs agree (``n_signed`` of them); ``n_realised_zero``:
    entries whose evaluation cost did not change at all; ``ratio_median``: the median of
    realised ÷ predicted over entries with |predicted| > eps; ``slope``: the least-squares
    slope of realised on predicted through the origin (1 = calibrated on average);
    ``mean_predicted`` / ``mean_realised``.
    """
    rows: dict[str, list[tuple[float, float]]] = {}
    for entry in entries:
        p = float(entry.get("predicted_cost_change", math.nan))
        r = float(entry.get("realised_cost_change", math.nan))
        if math.isnan(p) or math.isnan(r):
            continue
        case = entry.get("case")
        key = "n/a" if case is None or (isinstance(case, float) and math.isnan(case)) \
            else str(int(case))
        rows.setdefault(key, []).append((p, r))
        rows.setdefault("all", []).append((p, r))
    table = {}
    for key in sorted(rows, key=lambda k: (k == "all", k)):
        p, r = (np.array(col) for col in zip(*rows[key]))
        signed = (np.abs(p) > eps) & (r != 0)
        moved = np.abs(p) > eps
        table[key] = {
            "n": int(p.size),
            "n_signed": int(signed.sum()),
            "sign_agreement": float(np.mean(np.sign(p[signed]) == np.sign(r[signed])))
            if signed.any() else math.nan,
            "n_realised_zero": int((r == 0).sum()),
            "ratio_median": float(np.median(r[moved] / p[moved])) if moved.any() else math.nan,
            "slope": float((p * r).sum() / (p * p).sum()) if (p * p).sum() > 0 else math.nan,
            "mean_predicted": float(p.mean()),
            "mean_realised": float(r.mean()),
        }
    return table


#: Names of the CPO step's cases (``optim.cpo``), for tables.
CASE_NAMES = {"0": "violating, no feasible step: cost descent",
              "1": "violating, feasible step exists", "2": "satisfied, plane cuts trust region",
              "3": "satisfied, trust region feasible", "4": "no cost gradient: TRPO step",
              "all": "all steps", "n/a": "unknown"}


def calibration_markdown(table: Mapping[str, Mapping[str, float]]) -> str:
    """The calibration table as markdown (one row per case)."""
    def f(value: float, digits: int = 2) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    lines = ["| case | steps | sign agreement | realised ÷ predicted (median) | slope | "
             "mean predicted | mean realised | no change |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, row in table.items():
        lines.append(
            f"| {key}: {CASE_NAMES.get(key, key)} | {row['n']} | "
            f"{f(row['sign_agreement'])} ({row['n_signed']}) | {f(row['ratio_median'])} | "
            f"{f(row['slope'])} | {f(row['mean_predicted'])} | {f(row['mean_realised'])} | "
            f"{row['n_realised_zero']} |")
    return "\n".join(lines) + "\n"
