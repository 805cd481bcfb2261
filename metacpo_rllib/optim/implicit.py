"""Implicitly differentiated CPO steps of many instances: one reverse-pass solve per instance.

The metric solves v = A⁻¹g, w = A⁻¹b are known (one conjugate gradient for all instances);
the steps' gradients w.r.t. g, b and A's own parameters are those of the exact solves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from metacpo_rllib.optim.cpo import CPOStep, steps_from_solutions
from metacpo_rllib.optim.forms import SolvedForms
from metacpo_rllib.optim.linalg import (
    conjugate_gradient,
    differentiated_as,
    zero_with_solve_gradient,
)
from metacpo_rllib.optim.policy import Params, detached
from metacpo_rllib.optim.surrogate import fisher_product


def implicit_steps(
    instances: Sequence[tuple[Tensor, Tensor | None, Tensor, Tensor]],
    solutions: Sequence[tuple[Tensor, Tensor]],
    products: Tensor,
    solve: Callable[[Tensor], Tensor],
    backend: str = "closed_form",
    recover_when_violating: bool = False,
) -> list[CPOStep]:
    """CPO steps of several instances whose metric solves are known, differentiated as the
    exact solves: one solve per instance in each reverse pass, rather than two.

    ``instances[i] = (g, b, c, δ)`` (as from ``cpo.check_inputs``); ``solutions[i] = (v, w)``
    the values of ``A_i⁻¹g``, ``A_i⁻¹b`` (w = 0 without b); ``products`` the (n, k·m) block
    ``A_i [v w]`` (k = 2 columns per instance, 1 without b), built with the graph of A_i;
    ``solve(Y)`` maps an (n, m) block, one column per instance, to ``A_i⁻¹ Y[:, i]``.

    The step is ``x = αv + βw`` with α, β functions of c, δ and the forms ``q = gᵀA⁻¹g``,
    ``r = gᵀA⁻¹b``, ``s = bᵀA⁻¹b``, whose gradients need no solve (dq = 2vᵀdg − vᵀdA v,
    dr = wᵀdg + vᵀdb − vᵀdA w, ds = 2wᵀdb − wᵀdA w); the rest, at fixed α, β, is
    ``d(αv + βw) = A⁻¹(α dg + β db − dA x)``: one column per instance. Values are those of
    :func:`step_from_solution` on the same solves.
    """
    width = products.shape[1] // len(instances)
    forms = []
    for i, ((g, b, _, _), (v, w)) in enumerate(zip(instances, solutions)):
        av = products[:, width * i]
        if b is None:
            zero = g.new_zeros(())
            forms.append(SolvedForms(differentiated_as(g @ v, 2.0 * (v @ g) - v @ av), zero,
                                     zero))
        else:
            aw = products[:, width * i + 1]
            forms.append(SolvedForms(differentiated_as(g @ v, 2.0 * (v @ g) - v @ av),
                                     differentiated_as(g @ w, w @ g + v @ b - v @ aw),
                                     differentiated_as(b @ w, 2.0 * (w @ b) - w @ aw),
                                     functools.partial(_schur_envelope, g, b, v, w, av, aw)))
    steps = steps_from_solutions(instances, solutions, identity_metric=False, backend=backend,
                                 forms=forms, recover_when_violating=recover_when_violating)
    residuals = []
    for i, ((g, b, _, _), step) in enumerate(zip(instances, steps)):
        residual = step.alpha.detach() * (g - products[:, width * i])
        if b is not None:
            residual = residual + step.beta.detach() * (b - products[:, width * i + 1])
        residuals.append(residual)
    direction = zero_with_solve_gradient(torch.stack(residuals, dim=1), solve)
    return [dataclasses.replace(step, x=step.x + direction[:, i], reverse_solve=solve)
            for i, step in enumerate(steps)]


def _schur_envelope(g: Tensor, b: Tensor, v: Tensor, w: Tensor, av: Tensor, aw: Tensor,
                    t: Tensor) -> Tensor:
    """2uᵀ(g − tb) − uᵀAu with u = v − tw (t, v, w constants; Av, Aw with A's graph):
    A's value at the exact solve, with dA = 2uᵀ(dg − t db) − uᵀ dA u."""
    t = t.detach()
    u = v - t * w
    return 2.0 * (u @ (g - t * b)) - u @ (av - t * aw)


class ReverseSolve:
    """``Y ↦ [A_1⁻¹Y[:, 0], …]``, one column per instance, A_i = F_i + damping·I with F_i
    the policy's Fisher at ``params[i]`` on ``states[i]``: the solve of the reverse pass
    through :func:`implicit_steps` (CG, each column as if alone).

    The meta-gradient takes two reverse passes (objective, constraint) through the last
    inner steps; :meth:`solve_pair` solves both passes' blocks in one CG, over the forward
    solve's product ``pair_product`` (``width`` columns per instance), and the caller hands
    each pass its solution with :meth:`reusing`.
    """

    def __init__(self, module: nn.Module, params: Sequence[Params], states: Sequence[Tensor],
                 pair_product: Callable[[Tensor], Tensor], width: int, iters: int,
                 damping: float, tol: float):
        self._module, self._params, self._states = module, params, states
        self._pair_product, self._width = pair_product, width
        self._cg = functools.partial(conjugate_gradient, iters=iters, damping=damping, tol=tol,
                                     batched_hvp=True)
        self._column_product: Callable[[Tensor], Tensor] | None = None
        self._given: Tensor | None = None

    def solve_pair(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        """The solutions of the (n, m) blocks ``first`` and ``second``, in one CG."""
        if self._width != 2:
            raise ValueError("solve_pair needs the two-column product of a constrained step")
        both = self._cg(self._pair_product.without_graph,
                        torch.stack([first.detach(), second.detach()], dim=2).flatten(1))
        return both[:, 0::2], both[:, 1::2]

    @contextlib.contextmanager
    def reusing(self, solution: Tensor | None) -> Iterator[None]:
        """Within the block, the reverse pass takes ``solution`` (the caller's solve of the
        block that pass brings, e.g. from :meth:`solve_pair`) instead of solving; None:
        solve as usual."""
        self._given = solution
        try:
            yield
        finally:
            self._given = None

    def __call__(self, block: Tensor) -> Tensor:
        if self._given is not None:
            if self._given.shape != block.shape:
                raise ValueError(f"reusing: the given solution is {tuple(self._given.shape)}, "
                                 f"the reverse pass brings {tuple(block.shape)}")
            return self._given
        if self._width == 1:
            return self._cg(self._pair_product.without_graph, block)
        if self._column_product is None:  # one column per instance: a graph of its own
            self._column_product = fisher_product(
                self._module, [detached(p) for p in self._params], self._states).without_graph
        return self._cg(self._column_product, block)
