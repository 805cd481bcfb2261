"""Reliability: random infeasible and degenerate CPO instances through every backend.

Every instance must give a recovery step (case 0) or a TRPO / CPO step (cases 1–4): no
exception, no NaN/inf in x, λ, ν, and the trust region respected.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from metacpo_rllib.optim.cpo import BACKENDS, CASE_INFEASIBLE, CASE_TRPO, cpo_step

#: Instances per backend (the primal cvxpylayers backend solves an n-dim cone program
#: per non-trivial instance and is the slowest; it still gets the full set).
NUM_INSTANCES = 1000


def random_instance(rng: np.random.Generator) -> dict:
    """One random CPO instance; most are infeasible or degenerate by construction."""
    n = int(rng.integers(1, 6))
    kind = int(rng.integers(0, 10))
    scale = 10.0 ** rng.uniform(-6, 4)
    g = rng.normal(size=n) * scale
    b = rng.normal(size=n) * 10.0 ** rng.uniform(-6, 4)
    c = float(rng.normal() * 10.0 ** rng.uniform(-3, 3))
    delta = float(10.0 ** rng.uniform(-8, 2))
    if kind == 0:                       # infeasible: violating far beyond the trust region
        c = abs(c) + 10.0 * math.sqrt(2 * delta * float(b @ b)) + 1.0
    elif kind == 1:                     # g = 0
        g = np.zeros(n)
    elif kind == 2:                     # b = 0 (with any c)
        b = np.zeros(n)
    elif kind == 3:                     # g ∥ b (either sign), constraint near active
        b = g * rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-2, 2)
        c = float(rng.choice([-1.0, 0.0, 1.0]) * math.sqrt(2 * delta * float(b @ b))
                  * rng.uniform(0.5, 1.5))
    elif kind == 4:                     # plane tangent to the trust region
        c = math.sqrt(2 * delta * float(b @ b)) * float(rng.choice([-1.0, 1.0]))
    elif kind == 5:                     # c = 0 exactly
        c = 0.0
    elif kind == 6:                     # tiny b below the zero threshold
        b = b / max(float(np.linalg.norm(b)), 1e-300) * 1e-6
    elif kind == 7:                     # TRPO (no constraint)
        b = None
    elif kind == 8:                     # both zero
        g, b = np.zeros(n), np.zeros(n)
    # kind 9: generic
    return {"g": g, "b": b, "c": c, "delta": delta, "kind": kind}


def instances(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [random_instance(rng) for _ in range(count)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_degenerate_instances_never_fail(backend):
    cases = np.zeros(5, dtype=int)
    start = time.perf_counter()
    for i, inst in enumerate(instances(NUM_INSTANCES, seed=11)):
        g = torch.tensor(inst["g"], dtype=torch.float64)
        b = None if inst["b"] is None else torch.tensor(inst["b"], dtype=torch.float64)
        try:
            step = cpo_step(g, b, inst["c"], inst["delta"], backend=backend)
        except Exception as err:  # noqa: BLE001 - the test is that nothing raises
            pytest.fail(f"instance {i} ({inst}) raised {type(err).__name__}: {err}")
        values = [step.x, step.lam, step.nu, step.predicted_reward_change,
                  step.predicted_cost_change]
        assert all(bool(torch.isfinite(v).all()) for v in values), (i, inst, step)
        assert 0 <= step.case <= 4
        cases[step.case] += 1
        if inst["b"] is None:
            assert step.case == CASE_TRPO
        if inst["kind"] == 0:
            assert step.case == CASE_INFEASIBLE, (i, inst)
        # Every step stays in the trust region (up to solver tolerance).
        half_sq = 0.5 * float(step.x @ step.x)
        assert half_sq <= inst["delta"] * (1 + 1e-4) + 1e-12, (i, inst, half_sq)
    elapsed = time.perf_counter() - start
    print(f"{backend}: {NUM_INSTANCES} instances in {elapsed:.1f} s, cases {cases.tolist()}")
    assert cases[CASE_INFEASIBLE] > 0 and cases[CASE_TRPO] > 0
