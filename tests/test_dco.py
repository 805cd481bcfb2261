"""DCO layers: dual/primal cvxpylayers are built once, really solve, scale, and fall back safely."""
from __future__ import annotations

import math

import diffcp
import numpy as np
import pytest
import torch

from metacpo_rllib.optim import dco
from metacpo_rllib.optim.cpo import cpo_step

T = torch.float64
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:cvxpylayers"),
              pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")]
LAYER_BACKENDS = ["cvxpylayers_dual", "cvxpylayers_primal"]


def instance(seed: int, t: float, n: int = 8, delta: float = 0.02, g_scale: float = 1.0,
             b_scale: float = 1.0):
    """g, b, c with c = t·√(2δ)‖b‖ (t ∈ (−1, 1) → cases 1–2, |t| > 1 → 0 or 3)."""
    rng = np.random.default_rng(seed)
    g = torch.tensor(rng.standard_normal(n) * g_scale, requires_grad=True)
    b = torch.tensor(rng.standard_normal(n) * b_scale, requires_grad=True)
    c = torch.tensor(t * math.sqrt(2 * delta) * float(b.detach().norm()), dtype=T,
                     requires_grad=True)
    return g, b, c, delta


@pytest.fixture
def spy(monkeypatch):
    """Records, per layer, how many instances got a solution and how many fell back
    (the dual layer is called through ``dual_steps``, a batch of instances per call)."""
    counts = {"dual_step": [0, 0], "primal_step": [0, 0]}
    for name, attr in (("dual_step", "dual_steps"), ("primal_step", "primal_step")):
        original = getattr(dco, attr)

        def wrapped(*args, _orig=original, _name=name, **kwargs):
            out = _orig(*args, **kwargs)
            for item in (out if isinstance(out, list) else [out]):
                counts[_name][item is None] += 1
            return out

        monkeypatch.setattr(dco, attr, wrapped)
    return counts


def test_dual_layer_is_built_once_and_dimension_free():
    layer = dco.dual_layer()
    assert dco.dual_layer() is layer
    g, b, c, delta = instance(0, 0.5, n=30)
    cpo_step(g, b, c, delta, backend="cvxpylayers_dual")
    g, b, c, delta = instance(1, 0.5, n=3000)
    cpo_step(g, b, c, delta, backend="cvxpylayers_dual")
    assert dco.dual_layer() is layer  # same layer whatever n


def test_dual_layer_solves_the_dimensionless_dual():
    """κ = r/√(qs), σ = √(1−κ²), c̃: TRPO point (λ̃ = 1, ν̃ = 0) when it is feasible, and the
    active-constraint point λ̃ = σ/√(1 − c̃²), ν̃ = λ̃c̃ + κ otherwise."""
    layer = dco.dual_layer()
    args = {k: v for k, v in dco.DUAL_SOLVER_ARGS.items()}
    for kappa, c_t in [(-0.6, 0.3), (0.2, -0.5), (0.6, 0.3), (0.9, -0.2)]:
        sigma = math.sqrt(1 - kappa**2)
        lam, nu = layer(torch.tensor(kappa, dtype=T), torch.tensor(sigma, dtype=T),
                        torch.tensor(c_t, dtype=T), solver_args=args)
        if c_t + kappa <= 0:  # TRPO step x̃ = ĝ feasible: c̃ + κ ≤ 0
            exp_lam, exp_nu = 1.0, 0.0
        else:
            exp_lam = sigma / math.sqrt(1 - c_t**2)
            exp_nu = exp_lam * c_t + kappa
        assert float(lam) == pytest.approx(exp_lam, abs=1e-9)
        assert float(nu) == pytest.approx(exp_nu, abs=1e-9)


def test_primal_layer_cached_per_n():
    dco.primal_layer.cache_clear()
    a = dco.primal_layer(4)
    assert dco.primal_layer(4) is a
    b5 = dco.primal_layer(5)
    for n in range(6, 4 + dco.PRIMAL_CACHE_SIZE):  # fill the cache
        dco.primal_layer(n)
    assert dco.primal_layer(4) is a  # touch 4: 5 is now the oldest
    dco.primal_layer(4 + dco.PRIMAL_CACHE_SIZE)  # evicts 5
    assert dco.primal_layer.cache_info().currsize == dco.PRIMAL_CACHE_SIZE
    assert dco.primal_layer(5) is not b5  # evicted, rebuilt
    dco.primal_layer.cache_clear()


@pytest.mark.parametrize("backend", LAYER_BACKENDS)
def test_layers_really_solve_cases_1_to_3(backend, spy):
    """No silent fallback: the layer itself produces the step in cases 1–3."""
    name = "dual_step" if backend == "cvxpylayers_dual" else "primal_step"
    seen = set()
    for seed, t in enumerate([0.5, -0.5, -2.0, 0.2, -0.2, 0.9, -1.5]):
        g, b, c, delta = instance(seed, t)
        st = cpo_step(g, b, c, delta, backend=backend)
        ref = cpo_step(g, b, c, delta)
        seen.add(st.case)
        torch.testing.assert_close(st.x, ref.x, atol=1e-9, rtol=0)
    assert seen == {1, 2, 3}
    assert spy[name] == [7, 0]


@pytest.mark.parametrize("backend", LAYER_BACKENDS)
def test_cases_0_and_4_skip_the_solver(backend, spy):
    g, b, c, delta = instance(3, 2.0)
    assert cpo_step(g, b, c, delta, backend=backend).case == 0
    assert cpo_step(g, None, c, delta, backend=backend).case == 4
    assert cpo_step(g, 1e-9 * b, -0.1, delta, backend=backend).case == 4
    assert spy == {"dual_step": [0, 0], "primal_step": [0, 0]}


@pytest.mark.parametrize("backend", LAYER_BACKENDS)
@pytest.mark.parametrize("scales", [(1e3, 1e-3, 1e-4), (1e-3, 1e2, 0.5), (1.0, 1.0, 1e-6)])
def test_layers_are_scale_invariant(backend, scales, spy):
    """Normalised layer data: g, b, δ over many orders of magnitude still agree."""
    g_scale, b_scale, delta = scales
    for seed, t in enumerate([0.5, -0.5, -0.1]):
        g, b, c, _ = instance(seed, t, delta=delta, g_scale=g_scale, b_scale=b_scale)
        st = cpo_step(g, b, c, delta, backend=backend)
        ref = cpo_step(g, b, c, delta)
        rho = math.sqrt(2 * delta)
        torch.testing.assert_close(st.x, ref.x, atol=1e-8 * rho, rtol=0)
        assert float(st.lam) == pytest.approx(float(ref.lam), rel=1e-6)
        assert float(st.nu) == pytest.approx(float(ref.nu), rel=1e-6, abs=1e-9 * float(ref.lam))
    assert sum(v[1] for v in spy.values()) == 0


@pytest.mark.parametrize("backend", LAYER_BACKENDS)
def test_no_grad_path(backend):
    """Without autograd, diffcp's solve-only path (no derivative options) is used."""
    g, b, c, delta = instance(4, 0.4)
    with torch.no_grad():
        st = cpo_step(g, b, c, delta, backend=backend)
    torch.testing.assert_close(st.x, cpo_step(g, b, c, delta).x.detach(), atol=1e-9, rtol=0)


class _Failing(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise diffcp.SolverError("solver exploded")


class _Garbage(torch.nn.Module):
    """Returns an obviously infeasible 'solution' of the right shape."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.n_outputs = n_outputs

    def forward(self, *params, **kwargs):
        if self.n_outputs == 2:  # dual: λ̃ tiny-but-valid, ν̃ huge → infeasible step
            return (params[0] * 0 + 1e-2, params[0] * 0 + 50.0)
        n = params[0].numel()  # primal: ‖y‖ = 10 > 1
        return (params[0] * 0 + 10.0 / math.sqrt(n), params[2] * 0 + 1.0, params[2] * 0)


@pytest.mark.parametrize("backend", LAYER_BACKENDS)
def test_solver_failure_falls_back_to_closed_form(backend, monkeypatch):
    g, b, c, delta = instance(5, 0.5)
    ref = cpo_step(g, b, c, delta)
    if backend == "cvxpylayers_dual":
        monkeypatch.setattr(dco, "dual_layer", lambda: _Failing())
    else:
        monkeypatch.setattr(dco, "primal_layer", lambda n: _Failing())
    with pytest.warns(RuntimeWarning, match="failed"):
        st = cpo_step(g, b, c, delta, backend=backend)
    torch.testing.assert_close(st.x, ref.x)
    (gg,) = torch.autograd.grad(st.x.sum(), g)
    assert torch.isfinite(gg).all()


@pytest.mark.parametrize("backend", LAYER_BACKENDS)
def test_bad_solver_output_falls_back_to_closed_form(backend, monkeypatch):
    g, b, c, delta = instance(6, 0.5)
    ref = cpo_step(g, b, c, delta)
    if backend == "cvxpylayers_dual":
        monkeypatch.setattr(dco, "dual_layer", lambda: _Garbage(2))
    else:
        monkeypatch.setattr(dco, "primal_layer", lambda n: _Garbage(3))
    with pytest.warns(RuntimeWarning, match="infeasible"):
        st = cpo_step(g, b, c, delta, backend=backend)
    torch.testing.assert_close(st.x, ref.x)


def test_dual_degenerate_parallel_falls_back(spy):
    """g = 2b with the constraint active: λ* = 0, the dual cannot give x; closed form does."""
    b = torch.linspace(-1.0, 2.0, 6, dtype=T, requires_grad=True)
    g = (2.0 * b).detach().requires_grad_()
    st = cpo_step(g, b, 0.05, 0.02, backend="cvxpylayers_dual")
    assert spy["dual_step"] == [0, 1]
    torch.testing.assert_close(st.x, cpo_step(g, b, 0.05, 0.02).x)
    assert torch.isfinite(torch.autograd.grad(st.x.sum(), b)[0]).all()


def test_primal_multipliers_from_layer_duals():
    """λ*, ν* from the primal layer's constraint duals satisfy g = λx + νb."""
    for seed, t in enumerate([0.5, -0.3, -2.0]):
        g, b, c, delta = instance(seed + 10, t)
        st = cpo_step(g, b, c, delta, backend="cvxpylayers_primal")
        resid = g - st.lam * st.x - st.nu * b
        assert float(resid.norm()) <= 1e-8 * float(g.norm())


def test_dual_layer_batched_over_instances_equals_one_call_each(monkeypatch):
    """Five instances (cases 0-3 and a TRPO one) in one steps_from_solutions call: the layer
    is called once, for the instances of cases 1-3, and every step and its gradients w.r.t.
    g, b, c equal those of one cpo_step per instance."""
    from metacpo_rllib.optim.cpo import check_inputs, steps_from_solutions

    calls = []
    original = dco.dual_layer()

    class Counting:
        def __call__(self, *params, **kwargs):
            calls.append(params[0].shape)
            return original(*params, **kwargs)

    monkeypatch.setattr(dco, "dual_layer", lambda: Counting())
    specs = [(0, 0.5), (1, -0.5), (2, -2.0), (3, 2.0), (4, 0.2)]
    single, batched = [], []
    for seed, t in specs:
        single.append(instance(seed, t))
        batched.append(instance(seed, t))
    checked = [check_inputs(g, b if i != 4 else None, c, d)
               for i, (g, b, c, d) in enumerate(batched)]
    steps = steps_from_solutions(checked, [(g, torch.zeros_like(g) if b is None else b)
                                           for g, b, _, _ in checked],
                                 identity_metric=True, backend="cvxpylayers_dual")
    assert calls == [torch.Size([3])]  # one layer call: cases 1, 2 and 3 (not 0, not TRPO)
    calls.clear()
    for i, ((g, b, c, d), (gb, bb, cb, _), step) in enumerate(zip(single, batched, steps)):
        ref = cpo_step(g, b if i != 4 else None, c, d, backend="cvxpylayers_dual")
        assert step.case == ref.case
        torch.testing.assert_close(step.x, ref.x, atol=1e-12, rtol=0)
        weights = torch.linspace(-1.0, 1.0, g.numel(), dtype=T)
        grads = torch.autograd.grad(step.x @ weights, [gb, cb] + ([bb] if i != 4 else []),
                                    allow_unused=True)
        expected = torch.autograd.grad(ref.x @ weights, [g, c] + ([b] if i != 4 else []),
                                       allow_unused=True)
        for got, want in zip(grads, expected):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)
