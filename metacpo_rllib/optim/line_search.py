"""Backtracking line search for the real (outer) parameter update of CPO / TRPO."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Generic, TypeVar

P = TypeVar("P")


@dataclasses.dataclass
class LineSearchResult(Generic[P]):
    accepted: bool
    params: P | None           # the accepted candidate (None when nothing was accepted)
    fraction: float            # accepted step fraction (0.0 when nothing was accepted)
    steps_tried: int
    reward_change: float       # surrogate changes and KL at the accepted candidate
    cost_change: float
    kl: float


def line_search(
    candidate_at: Callable[[float], P],
    evaluate: Callable[[P], tuple[float, float, float]],
    *,
    delta: float,
    constraint_value: float | None,
    require_improvement: bool = True,
    steps: int = 15,
    decay: float = 0.8,
) -> LineSearchResult[P]:
    """Try fractions 1, decay, decay², ... of the step; accept the first candidate with

    - KL (or ½‖Δθ‖² for the Euclidean metric) ≤ ``delta``,
    - reward-surrogate change > 0 (unless ``require_improvement`` is False: recovery steps),
    - cost-surrogate change ≤ max(−c, 0) with c = ``constraint_value`` (skipped when None),
    all values finite. ``evaluate(candidate)`` returns (reward change, cost change, kl).
    """
    for i in range(steps):
        fraction = decay ** i
        candidate = candidate_at(fraction)
        reward_change, cost_change, kl = evaluate(candidate)
        if not all(math.isfinite(v) for v in (reward_change, cost_change, kl)):
            continue
        if kl > delta * (1.0 + 1e-6):  # tolerance for rounding at the boundary
            continue
        if require_improvement and reward_change <= 0:
            continue
        if constraint_value is not None and cost_change > max(-constraint_value, 0.0):
            continue
        return LineSearchResult(True, candidate, fraction, i + 1, reward_change, cost_change, kl)
    return LineSearchResult(False, None, 0.0, steps, 0.0, 0.0, 0.0)
