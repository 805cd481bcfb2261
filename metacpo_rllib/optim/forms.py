"""The scalar forms of a CPO instance, q = gᵀH⁻¹g, r = gᵀH⁻¹b, s = bᵀH⁻¹b, and the Schur
complement A = q − r²/s, shared by the closed form (``cpo``), the DCO layers (``dco``) and
the implicit differentiation of known solves (``implicit``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from metacpo_rllib.optim.linalg import differentiated_as
from metacpo_rllib.optim.linalg import scalar_float as _f


@dataclass(frozen=True)
class SolvedForms:
    """``q = gᵀA⁻¹g``, ``r = gᵀA⁻¹b``, ``s = bᵀA⁻¹b`` of known solves v, w, with the
    gradients of the exact solves (built by ``implicit.implicit_steps``)."""

    q: Tensor
    r: Tensor
    s: Tensor
    #: t ↦ the Schur complement A = min_t (g − tb)ᵀA⁻¹(g − tb) at t = r/s, differentiated
    #: by the envelope theorem (well conditioned as g → b); None without b
    schur: Callable[[Tensor], Tensor] | None = None


def schur_complement(g: Tensor, b: Tensor, v: Tensor, w: Tensor, q: Tensor, r: Tensor,
                     s: Tensor, rs: Tensor | None = None, qf: float | None = None,
                     envelope: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``A = q − r²/s ≥ 0`` (= uᵀHu for ``u = v − (r/s) w``, the part of H⁻¹g H-orthogonal
    to H⁻¹b).

    When ``g`` is nearly parallel to ``b`` (A ≤ √eps·q) the subtraction loses more than
    half the digits; then A's value is ``uᵀ(g − (r/s) b)`` instead (no cancellation
    beyond that of u itself), clamped at 0 — differentiated as that product, or, when v
    and w carry no graph, as ``envelope(r/s)`` (:attr:`SolvedForms.schur`).
    """
    rs = r / s if rs is None else rs
    big_a = q - r * rs
    if _f(big_a) > math.sqrt(torch.finfo(g.dtype).eps) * (_f(q) if qf is None else qf):
        return big_a
    precise = torch.clamp((v - rs * w) @ (g - rs * b), min=0.0)
    return precise if envelope is None else differentiated_as(precise, envelope(rs))
