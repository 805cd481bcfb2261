"""Differentiable small linear-algebra helpers: conjugate gradient, NaN-free division and sqrt."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

HVP = Callable[[Tensor], Tensor]


def scalar_float(t: Tensor) -> float:
    """Python float of a one-element tensor, for control flow only (never on the data path)."""
    return float(t.detach())


def safe_div(num: Tensor | float, den: Tensor, eps: float = 0.0) -> Tensor:
    """``num / den`` where ``|den| > eps``, else 0 — with finite gradients everywhere.

    Uses the double-``where`` trick: the masked-out branch divides by 1, so no inf/NaN
    enters the backward pass either.
    """
    ok = den.abs() > eps
    one = torch.ones((), dtype=den.dtype, device=den.device)
    return torch.where(ok, num / torch.where(ok, den, one), torch.zeros((), dtype=den.dtype,
                                                                     device=den.device))


def safe_sqrt(x: Tensor, eps: float = 0.0) -> Tensor:
    """``sqrt(x)`` where ``x > eps``, else 0 — the gradient is finite (0) at and below eps."""
    ok = x > eps
    return torch.where(ok, torch.sqrt(torch.where(ok, x, torch.ones_like(x))), torch.zeros_like(x))


def differentiated_as(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value``, with the gradient of ``surrogate`` (a function equal to it where it matters,
    e.g. at an exact solve, whose gradient is the one wanted)."""
    return value.detach() + (surrogate - surrogate.detach())


def conjugate_gradient(
    hvp: HVP,
    v: Tensor,
    iters: int,
    damping: float = 0.0,
    tol: float = 1e-10,
    *,
    batched_hvp: bool = False,
) -> Tensor:
    """Approximately solve ``(H + damping·I) x = v`` by conjugate gradient from x₀ = 0.

    ``hvp(u) = H u`` for an SPD ``H`` given only through products. ``v`` is ``(n,)`` or
    ``(n, k)`` (k right-hand sides solved together: one shared loop, per-column step
    sizes; ``hvp`` is called once per column unless ``batched_hvp`` says it maps an
    ``(n, k)`` block to ``H @ block``). A column stops changing once its squared residual
    ``rᵀr`` is below ``tol`` (absolute, the usual TRPO/CPO convention), so it gets the
    value it would get if solved alone; the loop ends after ``iters`` iterations or once
    every column has stopped. Plain torch ops only, so the result is differentiable w.r.t.
    ``v`` and whatever ``hvp`` depends on (unrolled CG); the stopping test is the only
    Python-side read of a value.
    """
    if v.dim() not in (1, 2):
        raise ValueError(f"v must have shape (n,) or (n, k), got {tuple(v.shape)}")
    single = v.dim() == 1
    # Columns are kept as contiguous rows (k, n): a column's sums then round as if alone.
    rhs = v.unsqueeze(0) if single else v.t().contiguous()
    k = rhs.shape[0]

    def apply(p: Tensor) -> Tensor:
        if batched_hvp:
            hp = hvp(p.t()).t()
        else:
            hp = torch.stack([hvp(p[j]) for j in range(k)])
        return hp + damping * p if damping else hp

    x = torch.zeros_like(rhs)
    r = rhs
    p = rhs
    rr = (r * r).sum(1, keepdim=True)
    for _ in range(iters):
        active = rr >= tol  # a converged column keeps its x (as if solved alone)
        if not bool(active.any()):
            break
        hp = apply(p)
        alpha = torch.where(active, safe_div(rr, (p * hp).sum(1, keepdim=True)),
                            torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = (r * r).sum(1, keepdim=True)
        p = r + safe_div(rr_new, rr) * p
        rr = rr_new
    return x.squeeze(0) if single else x.t()


class _ZeroValueSolve(torch.autograd.Function):
    """Value 0, gradient of a fixed SPD solve: backward maps ``grad`` to ``A⁻¹ grad``."""

    @staticmethod
    def forward(ctx, residual: Tensor, solve: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.solve = solve
        return torch.zeros_like(residual)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        with torch.enable_grad():  # products may use autograd themselves
            # A is symmetric: the adjoint solve is the same solve
            return ctx.solve(grad.detach()).detach(), None


def zero_with_solve_gradient(residual: Tensor, solve: Callable[[Tensor], Tensor]) -> Tensor:
    """Zeros shaped like ``residual`` whose reverse pass maps ``grad`` to ``solve(grad)``.

    With ``solve(y) ≈ A⁻¹y`` for a symmetric A, ``x₀ + zero_with_solve_gradient(rhs − A x₀,
    solve)`` has the value x₀ and the gradient of the exact solve ``A⁻¹ rhs``: dx =
    A⁻¹(d rhs − dA·x₀), through the graph of ``rhs − A x₀`` (built by the caller).
    """
    return _ZeroValueSolve.apply(residual, solve)


@dataclass(frozen=True)
class MetricProduct:
    """A metric product ``V -> H V``: ``with_graph`` differentiable w.r.t. what H is built
    from (when asked for), ``without_graph`` its cheaper graph-free twin for the solves."""

    with_graph: Callable[[Tensor], Tensor]
    without_graph: Callable[[Tensor], Tensor]

    def __call__(self, block: Tensor) -> Tensor:
        return self.with_graph(block)


def solve_spd(hvp: HVP, rhs: Tensor, iters: int, damping: float = 0.0, tol: float = 1e-10
              ) -> Tensor:
    """``x = (H + damping·I)⁻¹ rhs`` by conjugate gradient, differentiated implicitly.

    The value is CG's. Gradients are those of the exact solve, dx = A⁻¹(d rhs − dA·x),
    w.r.t. ``rhs`` and whatever ``hvp`` is built from — not those of the unrolled CG
    iterations, which are unstable once CG has converged (their ratios of vanishing
    residuals). One extra product A·x with the graph in the forward pass and one CG solve
    per reverse pass. Second derivatives hold A fixed. ``rhs`` is (n,) or (n, k).
    A :class:`MetricProduct` ``hvp`` gives its cheaper graph-free twin to the solves.
    """
    def apply(p: Tensor) -> Tensor:
        hp = hvp(p) if p.dim() == 1 else torch.stack([hvp(c) for c in p.unbind(1)], dim=1)
        return hp + damping * p if damping else hp

    plain = hvp.without_graph if isinstance(hvp, MetricProduct) else (
        lambda p: hvp(p).detach())

    def fixed_solve(y: Tensor) -> Tensor:
        with torch.enable_grad():  # hvp may use autograd itself, also inside a backward pass
            return conjugate_gradient(plain, y.detach(), iters, damping, tol).detach()

    x = fixed_solve(rhs)
    if not torch.is_grad_enabled():
        return x
    residual = rhs - apply(x)
    if not residual.requires_grad:
        return x
    return x + zero_with_solve_gradient(residual, fixed_solve)
