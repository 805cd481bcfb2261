"""The CPO step (Achiam et al. 2017): analytic solution, and dispatch to the cvxpylayers backends.

Problem, for a step ``x`` in parameter space::

    maximise  gᵀx   subject to   ½ xᵀHx ≤ δ   and   c + bᵀx ≤ 0

``g`` is the gradient of the reward surrogate (ascent direction), ``b`` the gradient of the
cost surrogate, ``c = J_C(π) − h`` the constraint value in episode-cost units (positive =
violating), ``H`` an SPD metric (Fisher through ``hvp``, or the identity) and ``δ`` the
trust-region radius. With ``v = H⁻¹g``, ``w = H⁻¹b`` and the scalars ``q = gᵀv``,
``r = gᵀw``, ``s = bᵀw``, the Lagrangian dual is (λ, ν ≥ 0)::

    minimise  D(λ, ν) = (q − 2rν + sν²) / (2λ) + λδ − νc,     x* = (v − ν* w) / λ*

so ``ν*(λ) = max(0, (λc + r)/s)``. (The sign of ``r`` here is that of the reward gradient;
references written with a loss gradient carry ``−r`` instead.) Cases, OmniSafe numbering:
0 infeasible (recovery step ``−√(2δ/s) w``), 1 ``c > 0`` but feasible, 2 ``c ≤ 0`` and the
constraint plane cuts the trust region, 3 the whole trust region is feasible, 4 ``b ≈ 0``
(``bᵀb ≤ eps``) with ``c ≤ 0``, or ``b=None`` (TRPO step ``√(2δ/q) v``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from metacpo_rllib.optim.forms import SolvedForms, schur_complement
from metacpo_rllib.optim.linalg import scalar_float as _f
from metacpo_rllib.optim.linalg import solve_spd

BACKENDS = ("closed_form", "cvxpylayers_dual", "cvxpylayers_primal")

CASE_INFEASIBLE, CASE_RECOVERY, CASE_CUT, CASE_FEASIBLE, CASE_TRPO = 0, 1, 2, 3, 4
CASES = (CASE_INFEASIBLE, CASE_RECOVERY, CASE_CUT, CASE_FEASIBLE, CASE_TRPO)
# Cases with c > 0 (the policy violates): the step restores feasibility first, so the line
# search must not also demand a reward improvement (as OmniSafe's CPO: only cases >= 2 do).
RESTORING_CASES = (CASE_INFEASIBLE, CASE_RECOVERY)


class NonFiniteError(ValueError):
    """A NaN/inf among the CPO step's inputs (g, b, c or δ), e.g. a non-finite gradient.

    A ValueError (as before); callers that skip such an update catch this subclass only.
    ``index``: which instance of a batched call (``meta.constrained_steps``) had it.
    """

    index: int | None = None


@dataclass
class CPOStep:
    """Result of one CPO step; every tensor is differentiable w.r.t. g, b, c (and hvp's graph).

    ``x = (H⁻¹g − ν H⁻¹b)/λ`` in cases 1–4, except in the degenerate ``g ∥ b`` limit of
    cases 1–2 where ``λ = 0`` and ``x = −(c/s) H⁻¹b`` (the minimum-norm optimal point). In
    case 0, ``λ = 0``, ``ν = √(2δ/s)`` and ``x = −ν H⁻¹b``. Every backend but the primal
    layer gives ``x = α H⁻¹g + β H⁻¹b`` and reports ``alpha``, ``beta`` (else None).
    """

    x: Tensor
    lam: Tensor
    nu: Tensor
    case: int
    v: Tensor  # H⁻¹g
    w: Tensor  # H⁻¹b (0 without b)
    q: Tensor
    r: Tensor
    s: Tensor
    g: Tensor  # the gradients the step was taken for
    b: Tensor | None
    alpha: Tensor | None = None
    beta: Tensor | None = None
    #: the solve that x's gradient takes in a reverse pass (``implicit.implicit_steps``), shared
    #: by the instances solved together; None when x is differentiated otherwise
    reverse_solve: Callable[[Tensor], Tensor] | None = None

    @property
    def predicted_reward_change(self) -> Tensor:
        """gᵀx: the reward surrogate's first-order change."""
        return self.g @ self.x

    @property
    def predicted_cost_change(self) -> Tensor:
        """bᵀx (0 without b): the predicted change of the mean episode cost."""
        return self.b @ self.x if self.b is not None else self.x.new_zeros(())

    @property
    def metric_solution(self) -> Tensor:
        """(n, 2): the columns H⁻¹g, H⁻¹b, cut from the graph (kept by ``meta.inner_steps``)."""
        return torch.stack([self.v, self.w], dim=1).detach()


def cpo_step(
    g: Tensor,
    b: Tensor | None,
    c: float | Tensor,
    delta: float | Tensor,
    *,
    hvp: Callable[[Tensor], Tensor] | None = None,
    backend: str = "closed_form",
    cg_iters: int = 10,
    cg_damping: float = 0.0,
    cg_tol: float = 1e-10,
    eps: float = 1e-8,
) -> CPOStep:
    """Solve the CPO subproblem (module docstring) and return a differentiable :class:`CPOStep`.

    ``hvp=None`` means ``H = I`` exactly; otherwise ``H⁻¹g, H⁻¹b`` come from CG on
    ``H + cg_damping·I``, which is then also the trust-region metric. ``b=None`` gives the
    TRPO step. ``eps`` is the ``bᵀb`` threshold below which ``b`` counts as zero.
    ``backend`` is one of :data:`BACKENDS`; all give the same ``x``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cvxpylayers_primal" and hvp is not None:
        raise ValueError("backend 'cvxpylayers_primal' is Euclidean only (H = I); pass hvp=None "
                         "or use backend='closed_form' / 'cvxpylayers_dual' for a Fisher metric")
    g, b, c, delta = check_inputs(g, b, c, delta)
    v, w = _metric_solve(g, b, hvp, cg_iters, cg_damping, cg_tol)
    return step_from_solution(g, b, c, delta, v, w, identity_metric=hvp is None,
                              backend=backend, eps=eps)


def step_from_solution(g: Tensor, b: Tensor | None, c: Tensor, delta: Tensor, v: Tensor,
                       w: Tensor, *, identity_metric: bool, backend: str = "closed_form",
                       eps: float = 1e-8, forms: SolvedForms | None = None) -> CPOStep:
    """The CPO step given the metric solves ``v = H⁻¹g`` and ``w = H⁻¹b`` (``w = 0``
    without ``b``), differentiable through them: :func:`cpo_step` after its solve, for
    callers that solve many instances together. Inputs as returned by :func:`check_inputs`;
    ``identity_metric``: H = I (then ``v = g``, ``w = b``).

    ``forms``: q, r, s (and the Schur complement's gradient) from the caller, who then
    passes ``v``, ``w`` as values without a graph: the step's gradients flow through the
    forms and α, β only, and the caller adds the solve's own part, ``d(αv + βw)`` at fixed
    α, β (one solve: ``implicit.implicit_steps``).
    """
    return steps_from_solutions([(g, b, c, delta)], [(v, w)], identity_metric=identity_metric,
                                backend=backend, eps=eps, forms=[forms])[0]


@dataclass
class _Instance:
    """One CPO instance with its solves, forms, float scalars and case."""

    g: Tensor
    b: Tensor | None
    c: Tensor
    delta: Tensor
    v: Tensor
    w: Tensor
    q: Tensor
    r: Tensor
    s: Tensor
    floats: tuple[float, float, float, float, float]
    case: int
    envelope: Callable[[Tensor], Tensor] | None


def steps_from_solutions(
    instances: Sequence[tuple[Tensor, Tensor | None, Tensor, Tensor]],
    solutions: Sequence[tuple[Tensor, Tensor]],
    *,
    identity_metric: bool,
    backend: str = "closed_form",
    eps: float = 1e-8,
    forms: Sequence[SolvedForms | None] | None = None,
    recover_when_violating: bool = False,
) -> list[CPOStep]:
    """:func:`step_from_solution` of several instances (``instances[i] = (g, b, c, δ)``,
    ``solutions[i] = (v, w)``, ``forms[i]``); the ``cvxpylayers_dual`` backend solves all
    instances that need its layer in one batched layer call. ``recover_when_violating``:
    every instance with c > 0 takes the pure recovery step (case 0; see :func:`classify`)."""
    forms = [None] * len(instances) if forms is None else forms
    prepared = [_prepare(g, b, c, delta, v, w, identity_metric, eps, f, recover_when_violating)
                for (g, b, c, delta), (v, w), f in zip(instances, solutions, forms)]
    solved: list = [None] * len(prepared)
    layered = [i for i, p in enumerate(prepared) if p.case not in (CASE_INFEASIBLE, CASE_TRPO)]
    if backend != "closed_form" and layered:
        from metacpo_rllib.optim import dco  # lazy: cvxpy is slow to import

        if backend == "cvxpylayers_dual":
            duals = dco.dual_steps([(p.g, p.b, p.v, p.w, p.q, p.r, p.s, p.c, p.delta, p.envelope)
                                    for p in (prepared[i] for i in layered)])
            for i, dual in zip(layered, duals):
                solved[i] = dual
        else:
            for i in layered:
                p = prepared[i]
                primal = dco.primal_step(p.g, p.b, p.c, p.delta)
                if primal is not None:
                    x, lam, nu = primal
                    solved[i] = CPOStep(x=x, lam=lam, nu=nu, case=p.case, v=p.v, w=p.w, q=p.q,
                                        r=p.r, s=p.s, g=p.g, b=p.b, alpha=None, beta=None)
    return [solution if isinstance(solution, CPOStep) else _finish(p, solution)
            for p, solution in zip(prepared, solved)]


def _prepare(g: Tensor, b: Tensor | None, c: Tensor, delta: Tensor, v: Tensor, w: Tensor,
             identity_metric: bool, eps: float, forms: SolvedForms | None,
             recover_when_violating: bool = False) -> _Instance:
    zero = g.new_zeros(())
    if forms is None:
        q = g @ v
        r, s = (g @ w, b @ w) if b is not None else (zero, zero)
    else:
        q, r, s = forms.q, forms.r, forms.s
    floats = (_f(q), _f(r), _f(s), _f(c), _f(delta))
    bb = 0.0 if b is None else (floats[2] if identity_metric else _f(b @ b))
    case = classify(*floats, bb, has_b=b is not None, eps=eps,
                    recover_when_violating=recover_when_violating)
    return _Instance(g, b, c, delta, v, w, q, r, s, floats, case,
                     None if forms is None else forms.schur)


def _finish(p: _Instance, step: tuple[Tensor, Tensor, Tensor, Tensor] | None) -> CPOStep:
    """The step from the layer's (α, β, λ, ν), or from the closed form when it gave none."""
    if step is None:
        step = closed_form(p)
    alpha, beta, lam, nu = step
    x = torch.addcmul(alpha * p.v, beta, p.w)
    return CPOStep(x=x, lam=lam, nu=nu, case=p.case, v=p.v, w=p.w, q=p.q, r=p.r, s=p.s, g=p.g,
                   b=p.b, alpha=alpha, beta=beta)


def classify(q: float, r: float, s: float, c: float, delta: float, bb: float, *,
             has_b: bool = True, eps: float = 1e-8, recover_when_violating: bool = False) -> int:
    """Case number 0–4 from the (float) scalars; see the module docstring.

    ``recover_when_violating``: c > 0 is always case 0 (the pure cost-descent step
    ``−√(2δ/s) H⁻¹b``), also where a feasible step exists (case 1): a violating policy
    spends its whole trust region on the cost, whatever the reward surrogate would gain."""
    if not has_b or (bb <= eps and c <= 0.0):
        return CASE_TRPO
    if recover_when_violating and c > 0.0:
        return CASE_INFEASIBLE
    if s <= 0.0:  # b ≠ 0 but bᵀH⁻¹b ≤ 0 (CG breakdown): no usable cost direction
        return CASE_FEASIBLE if c <= 0.0 else CASE_INFEASIBLE
    big_b = 2.0 * delta - c * c / s  # ≥ 0 ⟺ the plane c + bᵀx = 0 meets the trust region
    if c <= 0.0:
        return CASE_FEASIBLE if big_b < 0.0 else CASE_CUT
    return CASE_RECOVERY if big_b >= 0.0 else CASE_INFEASIBLE


def trpo_step_is_feasible(q: float, r: float, c: float, delta: float) -> bool:
    """Whether the TRPO step ``√(2δ/q) H⁻¹g`` satisfies ``c + bᵀx ≤ 0`` (then ν* = 0)."""
    if q <= 0.0:
        return c <= 0.0
    return c + r * math.sqrt(2.0 * delta / q) <= 0.0


def closed_form(p: _Instance) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Analytic ``(α, β, λ*, ν*)`` for a classified instance (torch ops, NaN-free); the step
    is ``x = α v + β w``.

    Cases 1–2 are solved by their active set (the TRPO step if it satisfies the cost
    constraint, else the plane ∩ sphere point), which gives the same λ*, ν* as the
    appendix's piecewise minimisation of the dual over λ (checked in the tests) without
    comparing the two pieces numerically. Divisions are guarded by Python-float tests of
    the same scalars (as for the case selection), so the graph holds only plain ops.
    ``p.floats`` are the Python values of (q, r, s, c, δ); ``p.envelope``: for v, w
    without a graph (see ``forms.schur_complement``).
    """
    case, g, b, v, w, c, delta, envelope = p.case, p.g, p.b, p.v, p.w, p.c, p.delta, p.envelope
    q, r, s = p.q, p.r, p.s
    qf, rf, sf, cf, df = p.floats
    zero = g.new_zeros(())
    if case == CASE_INFEASIBLE:  # recovery: steepest cost descent to the trust-region edge
        if sf <= 0.0:  # b = 0: no step reduces the cost (x = 0)
            return zero, zero, zero, zero
        nu = torch.sqrt(2.0 * delta / s)
        return zero, -nu, zero, nu
    if case in (CASE_FEASIBLE, CASE_TRPO) or trpo_step_is_feasible(qf, rf, cf, df):
        if qf <= 0.0:  # g = 0: stay (x = 0)
            return zero, zero, zero, zero
        lam = torch.sqrt(q / (2.0 * delta))
        return lam.reciprocal(), zero, lam, zero
    # Cases 1–2 with the cost constraint active: the optimum lies on the plane bᵀx = −c
    # and (unless g ∥ b) on the trust-region sphere. With u = v − (r/s) w (H-orthogonal to
    # w, uᵀHu = A = q − r²/s) and B = 2δ − c²/s:
    #   x = √(B/A) u − (c/s) w,   λ = √(A/B),   ν = (λc + r)/s,
    # which is (v − νw)/λ written so that it stays finite as A → 0 or B → 0.
    inv_s = s.reciprocal()  # products rather than quotients: a cheaper backward
    rs = r * inv_s
    c_over_s = c * inv_s
    big_a = schur_complement(g, b, v, w, q, r, s, rs, qf, envelope)
    big_b = 2.0 * delta - c * c_over_s
    af, bf = _f(big_a), _f(big_b)
    eps = torch.finfo(g.dtype).eps
    if af <= (100.0 * eps) ** 2 * qf:  # g ∥ b: the whole face is optimal; its min-norm point
        return zero, -c_over_s, zero, torch.clamp(rs, min=0.0)
    if bf <= 0.0:  # plane tangent to the trust region: a single feasible point, λ* = ∞
        # λ* = ∞ in exact arithmetic; a large finite stand-in (√A/√tiny ≈ 1e154·√A in
        # float64) keeps λ, ν finite where A/tiny would overflow to inf.
        lam = torch.sqrt(big_a) * (1.0 / math.sqrt(torch.finfo(g.dtype).tiny))
        nu = (lam * c + r) * inv_s
        if not math.isfinite(_f(nu)):  # |c|·λ overflowed: keep ν at the largest finite value
            nu = torch.clamp(nu, max=torch.finfo(g.dtype).max)
        return zero, -c_over_s, lam, nu
    ratio = torch.sqrt(big_b / big_a)  # = 1/λ*
    lam = ratio.reciprocal()
    nu = (lam * c + r) * inv_s  # ≥ 0 here up to rounding
    if _f(nu) < 0.0:
        nu = torch.clamp(nu, min=0.0)
    return ratio, -(ratio * rs + c_over_s), lam, nu


def _metric_solve(g: Tensor, b: Tensor | None, hvp: Callable[[Tensor], Tensor] | None,
                  iters: int, damping: float, tol: float) -> tuple[Tensor, Tensor]:
    """``(H⁻¹g, H⁻¹b)``; identity when ``hvp`` is None; both right-hand sides in one CG,
    differentiated implicitly (``solve_spd``)."""
    if hvp is None:
        return g, (b if b is not None else torch.zeros_like(g))
    if b is None:
        return solve_spd(hvp, g, iters, damping, tol), torch.zeros_like(g)
    sol = solve_spd(hvp, torch.stack([g, b], dim=1), iters, damping, tol)
    return sol[:, 0], sol[:, 1]


def check_inputs(g: Tensor, b: Tensor | None, c: float | Tensor, delta: float | Tensor
                  ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Shapes, dtypes, finiteness and ``delta > 0``; returns c, delta as 0-d tensors like g."""
    if not torch.is_tensor(g) or g.dim() != 1 or not g.is_floating_point():
        raise ValueError("g must be a 1-D floating-point tensor")
    _check_finite(g, "g")
    if b is not None:
        if not torch.is_tensor(b) or b.shape != g.shape:
            raise ValueError(f"b must be a tensor of shape {tuple(g.shape)} (like g) or None")
        b = b.to(g.dtype)
        _check_finite(b, "b")
    c = _scalar(c, g, "c")
    delta = _scalar(delta, g, "delta")
    if not _f(delta) > 0.0:
        raise ValueError(f"delta must be > 0, got {_f(delta)}")
    return g, b, c, delta


def _check_finite(t: Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` if ``t`` has a NaN/inf.

    A NaN/inf makes the sum non-finite, so one reduction settles the common case;
    the elementwise test (several times slower at large n) runs only if the sum is not
    finite, which also covers a sum that merely overflowed.
    """
    if not math.isfinite(_f(t.sum())) and not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{name} contains NaN or inf")


def _scalar(value: float | Tensor, like: Tensor, name: str) -> Tensor:
    """A 0-d tensor of like's dtype/device; ValueError naming ``name`` if not a finite scalar."""
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise NonFiniteError(f"{name} is NaN or inf")
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(t.shape)}")
    t = t.reshape(())
    if not math.isfinite(_f(t)):
        raise NonFiniteError(f"{name} is NaN or inf")
    return t
