"""DCO layers for the CPO step: the 2-variable dual and the n-dimensional primal as cvxpylayers.

The dual returns ``(α, β, λ*, ν*)`` with ``x = αH⁻¹g + βH⁻¹b``, the primal ``(x, λ*, ν*)``;
both differentiable w.r.t. g, b, c through the layer, or ``None`` when
the instance is degenerate for the solver or the solver fails; the caller
(:func:`metacpo_rllib.optim.cpo.cpo_step`) then uses the closed form, which is also used for
cases 0 (infeasible) and 4 (TRPO) without calling a solver. Conventions are those of
:mod:`metacpo_rllib.optim.cpo`: maximise gᵀx s.t. ½xᵀHx ≤ δ, c + bᵀx ≤ 0, g = λHx + νb.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Callable, Optional, Sequence

import cvxpy as cp
import diffcp
import numpy as np
import torch
from cvxpylayers.torch import CvxpyLayer
from torch import Tensor

from metacpo_rllib.optim.forms import schur_complement
from metacpo_rllib.optim.linalg import safe_sqrt
from metacpo_rllib.optim.linalg import scalar_float as _f

# diffcp options. "mode"/"n_jobs_backward" are only valid when a derivative is built
# (diffcp's solve-only path hands every option to the solver), see _solver_args.
# SCS at eps 1e-11 rather than Clarabel: on a ball constraint an interior-point gap ε only
# pins x down to ~√ε (Clarabel at 1e-12 leaves |Δx| ~ 1e-6 when the cost constraint is
# inactive), while SCS reaches |Δx| ~ 1e-11 here at a similar cost.
DUAL_SOLVER_ARGS: dict = {"solve_method": "SCS", "eps_abs": 1e-11, "eps_rel": 1e-11,
                          "max_iters": 100_000, "n_jobs_forward": 1}
PRIMAL_SOLVER_ARGS: dict = dict(DUAL_SOLVER_ARGS)
DENSE_DERIVATIVE_MAX_N = 200  # diffcp "dense" derivative up to this n, "lsqr" above
PRIMAL_CACHE_SIZE = 4
_SOLVER_ERRORS = (diffcp.SolverError, cp.error.SolverError, ValueError, RuntimeError,
                  ArithmeticError)
_MIN_SCALED_LAMBDA = 1e-6  # below this the dual is (near) degenerate: g ∥ b
_CHECK_TOL = 1e-4  # relative constraint violation that flags a failed solve


STACKED_CACHE_SIZE = 8  # stacked dual layers kept (one per batch size)


@lru_cache(maxsize=1)
def dual_layer() -> "DualLayer":
    """The CPO dual in dimensionless form, built once.

    With λ = λ̃·√q/√(2δ), ν = ν̃·√(q/s), κ = r/√(qs), σ = √(A/q) (A = q − r²/s, so
    κ² + σ² = 1) and c̃ = c/√(2δ s), the dual ``min D(λ, ν)`` becomes ``√(2δq)`` times::

        minimise  ½ ((ν̃ − κ)² + σ²)/λ̃ + ½ λ̃ − c̃ ν̃   over λ̃ ≥ 0, ν̃ ≥ 0

    (one second-order cone; DPP: the parameters enter affinely). Parameters (κ, σ ≥ 0, c̃),
    variables (λ̃, ν̃); see :class:`DualLayer` for batches.
    """
    return DualLayer()


def _dual_problem(k: int | None) -> CvxpyLayer:
    """The dimensionless dual (``k`` None), or the sum of ``k`` independent copies of it."""
    shape = () if k is None else (k,)
    lam, nu = cp.Variable(shape, nonneg=True), cp.Variable(shape, nonneg=True)
    kappa, sigma = cp.Parameter(shape), cp.Parameter(shape, nonneg=True)
    c_t = cp.Parameter(shape)
    if k is None:
        objective = (0.5 * cp.quad_over_lin(cp.hstack([nu - kappa, sigma]), lam)
                     + 0.5 * lam - c_t * nu)
    else:
        objective = (0.5 * sum(cp.quad_over_lin(cp.hstack([nu[i] - kappa[i], sigma[i]]),
                                                lam[i]) for i in range(k))
                     + 0.5 * cp.sum(lam) - c_t @ nu)
    problem = cp.Problem(cp.Minimize(objective))
    assert problem.is_dpp()
    return CvxpyLayer(problem, parameters=[kappa, sigma, c_t], variables=[lam, nu])


class DualLayer:
    """The dual layer: ``layer(κ, σ, c̃, solver_args=...) -> (λ̃, ν̃)``, one call per batch.

    Scalar parameters (or a batch of one) solve the one-instance problem. A batch of k > 1
    solves one stacked problem: k independent copies of the dual whose objective is the
    sum of theirs, so its solution is theirs, instance by instance. That is one cone program
    for SCS and one derivative for diffcp, instead of cvxpylayers' batch dimension, which
    solves and differentiates k programs one after another (its per-program overhead made a
    round of 5 instances cost ≈ 2.4-3× one call; stacked ≈ 1-1.5×). The stacked solution
    agrees with the per-instance ones to the solver's tolerance (``eps`` 1e-11).
    """

    def __init__(self) -> None:
        self.single = _dual_problem(None)
        self._stacked = lru_cache(maxsize=STACKED_CACHE_SIZE)(_dual_problem)

    def __call__(self, kappa: Tensor, sigma: Tensor, c_t: Tensor,
                 solver_args: dict | None = None) -> tuple[Tensor, Tensor]:
        if kappa.dim() == 0 or kappa.shape[0] == 1:
            return self.single(kappa, sigma, c_t, solver_args=solver_args)
        return self._stacked(int(kappa.shape[0]))(kappa, sigma, c_t, solver_args=solver_args)


DualInstance = tuple  # (g, b, v, w, q, r, s, c, δ, envelope), as dual_step's arguments
DualResult = Optional[tuple[Tensor, Tensor, Tensor, Tensor]]


def dual_step(g: Tensor, b: Tensor, v: Tensor, w: Tensor, q: Tensor, r: Tensor, s: Tensor,
              c: Tensor, delta: Tensor, envelope: Callable[[Tensor], Tensor] | None = None
              ) -> DualResult:
    """``(α, β, λ*, ν*)`` from the dual layer: ``x = αv + βw = (H⁻¹g − ν* H⁻¹b)/λ*``;
    None → use closed form.

    ``v, w`` are ``H⁻¹g, H⁻¹b`` and ``q, r, s`` their scalars; the layer never sees n.
    ``envelope``: for v, w without a graph (``forms.schur_complement``).
    """
    return dual_steps([(g, b, v, w, q, r, s, c, delta, envelope)])[0]


def dual_steps(instances: Sequence[DualInstance]) -> list[DualResult]:
    """:func:`dual_step` of several instances in one batched layer call (the layer takes a
    leading batch dimension of its three parameters); each result as dual_step's. A solver
    error in the batch falls back to one call per instance, so one bad instance does not
    take the others' layer solutions with it."""
    results: list[DualResult] = [None] * len(instances)
    scaled, rows = [], []
    for i, (g, b, v, w, q, r, s, c, delta, envelope) in enumerate(instances):
        if not (_f(q) > 0.0 and _f(s) > 0.0):
            continue
        big_a = schur_complement(g, b, v, w, q, r, s, envelope=envelope)
        rho, sqrt_q, sqrt_s = torch.sqrt(2.0 * delta), torch.sqrt(q), torch.sqrt(s)
        params = [(r / (sqrt_q * sqrt_s)), safe_sqrt(big_a / q), c / (rho * sqrt_s)]
        scaled.append(([p.to(torch.float64) for p in params], (g, rho, sqrt_q, sqrt_s)))
        rows.append(i)
    if not rows:
        return results
    batch = [torch.stack([params[k] for params, _ in scaled]) for k in range(3)]
    try:
        lam_t, nu_t = dual_layer()(*batch, solver_args=_solver_args(DUAL_SOLVER_ARGS, batch,
                                                                     dense=True))
        solved = list(zip(lam_t.unbind(0), nu_t.unbind(0)))
    except _SOLVER_ERRORS as err:
        if len(rows) == 1:
            warnings.warn(f"CPO dual layer failed ({err}); using the closed form",
                          RuntimeWarning)
            return results
        for i in rows:
            results[i] = dual_steps([instances[i]])[0]
        return results
    for i, (params, scale), (lam_i, nu_i) in zip(rows, scaled, solved):
        results[i] = _dual_result(params, scale, lam_i, nu_i)
    return results


def _dual_result(params: list[Tensor], scale: tuple[Tensor, Tensor, Tensor, Tensor],
                 lam_t: Tensor, nu_t: Tensor) -> DualResult:
    """``(α, β, λ*, ν*)`` from the dimensionless solution, or None when it is unusable."""
    g, rho, sqrt_q, sqrt_s = scale
    lt, nt = _f(lam_t), _f(nu_t)
    if not (np.isfinite(lt) and np.isfinite(nt)) or lt < _MIN_SCALED_LAMBDA:
        return None
    kappa, c_t = _f(params[0]), _f(params[2])
    kl_ratio = (1.0 - 2.0 * kappa * nt + nt * nt) / (lt * lt)  # ½xᵀHx / δ
    scaled_cost = c_t + (kappa - nt) / lt  # (c + bᵀx)/√(2δs)
    if kl_ratio > 1.0 + _CHECK_TOL or scaled_cost > _CHECK_TOL:
        warnings.warn("CPO dual layer returned an infeasible step; using the closed form",
                      RuntimeWarning)
        return None
    lam = lam_t.to(g.dtype) * sqrt_q / rho
    nu = nu_t.to(g.dtype) * sqrt_q / sqrt_s
    inv_lam = lam.reciprocal()
    return inv_lam, -nu * inv_lam, lam, nu


@lru_cache(maxsize=PRIMAL_CACHE_SIZE)
def primal_layer(n: int) -> CvxpyLayer:
    """``max gᵀx s.t. ‖x‖₂ ≤ ρ, c + bᵀx ≤ 0`` over x ∈ ℝⁿ (Euclidean), cached per n (the
    ``PRIMAL_CACHE_SIZE`` sizes used last).

    Parameters (g, b, c, ρ); variables (x, dual of the ball, dual of the cost constraint).
    """
    x = cp.Variable(n)
    g, b = cp.Parameter(n), cp.Parameter(n)
    c, sqrt_2delta = cp.Parameter(), cp.Parameter(nonneg=True)
    ball = cp.norm(x, 2) <= sqrt_2delta
    cost = c + b @ x <= 0
    problem = cp.Problem(cp.Maximize(g @ x), [ball, cost])
    return CvxpyLayer(problem, parameters=[g, b, c, sqrt_2delta],
                      variables=[x, ball.dual_variables[0], cost.dual_variables[0]])


def primal_step(g: Tensor, b: Tensor, c: Tensor, delta: Tensor
                ) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(x, λ*, ν*)`` from the n-dimensional primal layer (H = I); None → use closed form.

    The instance is fed normalised (ĝ = g/‖g‖, b̂ = b/‖b‖, unit ball, ĉ = c/(ρ‖b‖), ρ = √(2δ));
    then x = ρ y and, from ĝ = μ y + ν̂ b̂, λ* = ‖g‖μ/ρ and ν* = ‖g‖ν̂/‖b‖.
    """
    g_norm, b_norm = torch.linalg.vector_norm(g), torch.linalg.vector_norm(b)
    if not (_f(g_norm) > 0.0 and _f(b_norm) > 0.0):
        return None
    rho = torch.sqrt(2.0 * delta)
    params = [g / g_norm, b / b_norm, c / (rho * b_norm), torch.ones((), dtype=g.dtype)]
    params = [p.to(torch.float64) for p in params]
    n = g.numel()
    try:
        y, mu, nu_hat = primal_layer(n)(*params, solver_args=_solver_args(
            PRIMAL_SOLVER_ARGS, params, dense=n <= DENSE_DERIVATIVE_MAX_N))
    except _SOLVER_ERRORS as err:
        warnings.warn(f"CPO primal layer failed ({err}); using the closed form", RuntimeWarning)
        return None
    if not (torch.isfinite(y).all() and np.isfinite(_f(mu)) and np.isfinite(_f(nu_hat))):
        warnings.warn("CPO primal layer returned NaN/inf; using the closed form", RuntimeWarning)
        return None
    y_det = y.detach()
    if (_f(y_det @ y_det) > 1.0 + _CHECK_TOL
            or _f(params[2] + params[1].detach() @ y_det) > _CHECK_TOL):
        warnings.warn("CPO primal layer returned an infeasible step; using the closed form",
                      RuntimeWarning)
        return None
    x = rho * y.to(g.dtype)
    lam = g_norm * mu.to(g.dtype) / rho
    nu = g_norm * nu_hat.to(g.dtype) / b_norm
    return x, lam, nu


def _solver_args(base: dict, params: list[Tensor], dense: bool) -> dict:
    """Solver options; derivative options only when autograd will need the derivative."""
    args = dict(base)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        args.update(mode="dense" if dense else "lsqr", n_jobs_backward=1)
    return args
