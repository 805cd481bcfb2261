"""The per-iteration metrics (same names for all four variants), built from the Learner's summaries."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from metacpo_rllib.envs.base import Task
from metacpo_rllib.optim.cpo import CASE_INFEASIBLE, CASES

#: Results key under which everything of this module appears in ``algo.train()``.
METRICS_KEY = "metacpo"

#: Statistics of the inner steps, absent from optim's info when K = 0 (reported as 0).
INNER_STAT_DEFAULTS: dict[str, float] = {
    **{f"inner_case_{k}": 0.0 for k in CASES},
    "inner_lam_mean": 0.0, "inner_nu_mean": 0.0, "inner_recoveries": 0.0,
    "updates_skipped": 0.0,   # 1: the update was skipped (non-finite meta-gradient)
}


def _values(summaries: Sequence[Optional[Mapping]], key: str) -> list[float]:
    return [math.nan if s is None else float(s[key]) for s in summaries]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _violation_rate(costs: Sequence[float], limits: Sequence[float]) -> float:
    flags = [float(c > h) for c, h in zip(costs, limits) if not math.isnan(c)]
    return float(np.mean(flags)) if flags else math.nan


#: Outer-step statistics, NaN in the (degenerate) iteration without an update.
OUTER_STAT_DEFAULTS: dict[str, float] = {
    k: math.nan for k in (
        "outer_case", "outer_lam", "outer_nu", "outer_predicted_reward_change",
        "outer_predicted_cost_change", "outer_surrogate_reward_change",
        "outer_surrogate_cost_change", "outer_kl", "outer_delta", "outer_constraint_value",
        "outer_constraint_on_theta", "outer_theta_cost_change",
        "line_search_steps", "line_search_accepted")
}


def update_metrics(info: Mapping[str, float]) -> dict[str, float]:
    """optim's meta_update info, with the inner statistics and per-case indicators of the
    outer step filled in so that every variant reports the same keys."""
    out = {**OUTER_STAT_DEFAULTS, **INNER_STAT_DEFAULTS,
           **{k: float(v) for k, v in info.items()}}
    case = out.get("outer_case", math.nan)
    for k in CASES:
        out[f"outer_case_{k}"] = float(case == k)
    out["outer_recoveries"] = out[f"outer_case_{CASE_INFEASIBLE}"]
    return out


def iteration_metrics(
    tasks: Sequence[Task],
    rounds: Sequence[Sequence[Optional[Mapping]]],
    info: Mapping[str, float],
    placements: Sequence[tuple[int, str]],
    times: Mapping[str, float],
) -> dict[str, Any]:
    """Pre-adaptation (round 0) and post-adaptation (round K) return / cost / violation,
    per task and averaged, the update statistics, where each task was sampled ((EnvRunner
    index, Ray node id) pairs) and the time split of one iteration."""
    limits = [float(t.cost_limit) for t in tasks]
    pre_r, pre_c = _values(rounds[0], "mean_return"), _values(rounds[0], "mean_cost")
    post_r, post_c = _values(rounds[-1], "mean_return"), _values(rounds[-1], "mean_cost")
    dropped = sum(s is None for s in rounds[-1])
    return {
        "pre_return_mean": _mean(pre_r),
        "pre_cost_mean": _mean(pre_c),
        "pre_violation_rate": _violation_rate(pre_c, limits),
        "post_return_mean": _mean(post_r),
        "post_cost_mean": _mean(post_c),
        "post_violation_rate": _violation_rate(post_c, limits),
        "adaptation_gain": _mean(post_r) - _mean(pre_r),
        "cost_limit_mean": _mean(limits),
        "num_tasks": len(tasks),
        "num_tasks_dropped": int(dropped),
        "num_nodes_sampling": len({node for _, node in placements if node}),
        "env_steps_sampled": int(times["env_steps"]),
        "time": {"sample_s": float(times["sample_s"]), "learner_s": float(times["learner_s"])},
        "update": update_metrics(info),
        "per_task": {
            "task_id": [t.task_id for t in tasks],
            "cost_limit": limits,
            "runner": [runner for runner, _ in placements],
            "node_id": [node for _, node in placements],
            "pre_return": pre_r, "pre_cost": pre_c,
            "post_return": post_r, "post_cost": post_c,
            # the outer step's J_C and the factor its cost gradient was shrunk by (1: none)
            "constraint_cost": _values(rounds[-1], "constraint_cost"),
            "cost_signal_share": _values(rounds[-1], "cost_signal_share"),
            # 1: left out of the update (bad env output or non-finite gradient)
            "dropped": [int(s is None) for s in rounds[-1]],
        },
    }
