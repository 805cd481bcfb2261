"""CPO step: backends vs an independent cvxpy solve, KKT certificates, gradients, cases, errors."""
from __future__ import annotations

import math
import zlib

import cvxpy as cp
import numpy as np
import pytest
import torch

from metacpo_rllib.optim.cpo import BACKENDS, check_inputs, classify, cpo_step
from metacpo_rllib.optim.implicit import implicit_steps
from metacpo_rllib.optim.linalg import conjugate_gradient, safe_div, safe_sqrt

T = torch.float64  # everything here is float64 unless a test says otherwise
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:cvxpylayers"),
              pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")]

# Instance kinds: the five cases plus near-degenerate variants. With H = I the plane
# c + bᵀx = 0 lies at distance |c|/‖b‖ from 0, so c = t·ρ‖b‖ (ρ = √(2δ)) picks the case:
# t < −1 → 3, −1 < t ≤ 0 → 2, 0 < t ≤ 1 → 1, t > 1 → 0.
REGULAR = ["case0", "case1", "case2", "case3", "case4"]
DEGENERATE = ["c_zero", "c_tiny", "parallel_pos", "parallel_neg", "b_tiny_infeasible"]
EXPECTED_CASES = {"case0": {0}, "case1": {1}, "case2": {2}, "case3": {3}, "case4": {4},
                  "c_zero": {2}, "c_tiny": {1, 2}, "parallel_pos": {1, 2},
                  "parallel_neg": {1, 2}, "b_tiny_infeasible": {0}}
PER_KIND = 24  # 10 kinds × 24 = 240 random instances


def make_instance(rng: np.random.Generator, kind: str
                  ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A random (g, b, c, δ) of the given kind, H = I."""
    n = int(rng.choice([5, 8, 12, 20]))
    delta = float(10 ** rng.uniform(-3, -0.3))
    rho = math.sqrt(2 * delta)
    g = rng.standard_normal(n) * 10 ** rng.uniform(-1, 1)
    b = rng.standard_normal(n) * 10 ** rng.uniform(-1, 1)
    bn = np.linalg.norm(b)
    sign = rng.choice([-1.0, 1.0])
    if kind == "case0":
        c = rng.uniform(1.1, 3.0) * rho * bn
    elif kind == "case1":
        c = rng.uniform(0.05, 0.9) * rho * bn
    elif kind == "case2":
        c = -rng.uniform(0.05, 0.9) * rho * bn
    elif kind == "case3":
        c = -rng.uniform(1.1, 3.0) * rho * bn
    elif kind == "case4":
        b = rng.standard_normal(n) * 1e-6
        c = -rng.uniform(0.1, 1.0)
    elif kind == "c_zero":
        c = 0.0
    elif kind == "c_tiny":
        c = sign * 1e-10 * rho * bn
    elif kind in ("parallel_pos", "parallel_neg"):
        alpha = rng.uniform(0.5, 2.0) * (1.0 if kind == "parallel_pos" else -1.0)
        noise = rng.standard_normal(n)
        noise -= noise @ b / (bn * bn) * b
        g = alpha * b + 1e-3 * abs(alpha) * bn * noise / np.linalg.norm(noise)
        c = sign * rng.uniform(0.05, 0.9) * rho * bn
    elif kind == "b_tiny_infeasible":
        b = rng.standard_normal(n) * 1e-6
        c = rng.uniform(0.1, 1.0)
    else:
        raise AssertionError(kind)
    return g, b, float(c), delta


class Independent:
    """cvxpy (SCS, eps 1e-12) solve of the H-metric problem, one compiled problem per n.

    Data are normalised (ĝ, b̂ unit; the same problem). SCS rather than Clarabel: an
    interior-point gap ε fixes x on a ball only to ~√ε (|Δx| ~ 1e-6 for Clarabel at 1e-12).
    """

    def __init__(self) -> None:
        self._problems: dict[int, tuple] = {}

    def _problem(self, n: int) -> tuple:
        if n not in self._problems:
            x = cp.Variable(n)
            g, b, lt = cp.Parameter(n), cp.Parameter(n), cp.Parameter((n, n))
            c, rho = cp.Parameter(), cp.Parameter(nonneg=True)
            main = cp.Problem(cp.Maximize(g @ x), [cp.norm(lt @ x, 2) <= rho, c + b @ x <= 0])
            recovery = cp.Problem(cp.Minimize(b @ x), [cp.norm(lt @ x, 2) <= rho])
            self._problems[n] = (x, g, b, lt, c, rho, main, recovery)
        return self._problems[n]

    def solve(self, g: np.ndarray, b: np.ndarray, c: float, delta: float,
              h: np.ndarray | None = None) -> tuple[str, np.ndarray]:
        """('optimal' | 'recovery', x); recovery = argmin bᵀx over the trust region."""
        n = g.size
        x, gp, bp, ltp, cp_, rhop, main, recovery = self._problem(n)
        bn = np.linalg.norm(b)
        gp.value, bp.value = g / np.linalg.norm(g), b / bn
        ltp.value = np.linalg.cholesky(h).T if h is not None else np.eye(n)
        cp_.value, rhop.value = c / bn, math.sqrt(2 * delta)
        opts = dict(solver=cp.SCS, eps_abs=1e-12, eps_rel=1e-12, max_iters=200_000)
        main.solve(**opts)
        if main.status in ("optimal", "optimal_inaccurate"):
            return "optimal", x.value.copy()
        assert main.status in ("infeasible", "infeasible_inaccurate"), main.status
        recovery.solve(**opts)
        return "recovery", x.value.copy()


@pytest.fixture(scope="module")
def independent() -> Independent:
    return Independent()


def tensors(g, b, c):
    return (torch.tensor(g, requires_grad=True), torch.tensor(b, requires_grad=True),
            torch.tensor(c, dtype=T, requires_grad=True))


def vjp(step, inputs, cot):
    """Gradients of cotᵀx w.r.t. (g, b, c), zeros where x does not depend on an input."""
    return torch.autograd.grad(step.x @ cot, inputs, materialize_grads=True)


def assert_kkt(step, g, b, c, delta, h=None, tol=1e-9):
    """Feasibility, nonnegative multipliers, stationarity and complementary slackness."""
    hx = step.x if h is None else h @ step.x
    x = step.x.detach()
    hx = hx.detach()
    kl = 0.5 * float(x @ hx)
    cost = float(c + b @ x)
    scale_c = abs(float(c)) + math.sqrt(2 * delta * float(step.s.detach())) + 1e-300
    lam, nu = float(step.lam.detach()), float(step.nu.detach())
    assert lam >= 0 and nu >= 0
    if step.case == 0:
        assert kl == pytest.approx(delta, rel=tol)
        return
    assert kl <= delta * (1 + tol)
    assert cost <= tol * scale_c
    if step.case in (1, 2, 3, 4):
        resid = g - step.lam.detach() * hx - step.nu.detach() * b
        assert float(resid.norm()) <= 1e-7 * float(g.norm())
        assert lam * (delta - kl) <= tol * lam * delta
        assert nu * abs(cost) <= tol * (nu * scale_c + 1e-300)


# --------------------------------------------------------------------------------------
# backends vs independent solver, ≥ 200 random instances covering all five cases


@pytest.mark.parametrize("kind", REGULAR + DEGENERATE)
def test_backends_agree_with_independent_solve(kind, independent):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    for _ in range(PER_KIND):
        g_np, b_np, c_np, delta = make_instance(rng, kind)
        inputs = tensors(g_np, b_np, c_np)
        g, b, c = inputs
        cot = torch.randn(g.numel(), dtype=T)
        steps = {be: cpo_step(g, b, c, delta, backend=be) for be in BACKENDS}
        cf = steps["closed_form"]
        assert cf.case in EXPECTED_CASES[kind]
        assert all(s.case == cf.case for s in steps.values())
        status, x_ref = independent.solve(g_np, b_np, c_np, delta)
        assert status == ("recovery" if cf.case == 0 else "optimal")
        np.testing.assert_allclose(cf.x.detach().numpy(), x_ref, atol=1e-8, rtol=0)
        assert_kkt(cf, g.detach(), b.detach(), c.detach(), delta)
        grads = {be: vjp(s, inputs, cot) for be, s in steps.items()}
        for be in ("cvxpylayers_dual", "cvxpylayers_primal"):
            np.testing.assert_allclose(steps[be].x.detach(), cf.x.detach(), atol=1e-8, rtol=0)
            for name, ga, gb in zip("gbc", grads[be], grads["closed_form"]):
                scale = 1.0 + float(gb.abs().max())
                assert float((ga - gb).abs().max()) <= 1e-6 * scale, (be, name)
            if cf.case in (1, 2, 3) and not kind.startswith("parallel"):
                assert float(steps[be].lam) == pytest.approx(float(cf.lam), rel=1e-5, abs=1e-7)
                assert float(steps[be].nu) == pytest.approx(float(cf.nu), rel=1e-5,
                                                            abs=1e-6 * float(cf.lam))


def test_all_five_cases_are_covered():
    rng = np.random.default_rng(0)
    seen = set()
    for kind in REGULAR:
        g, b, c, delta = make_instance(rng, kind)
        seen.add(cpo_step(torch.tensor(g), torch.tensor(b), c, delta).case)
    assert seen == {0, 1, 2, 3, 4}


def random_spd(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.standard_normal((n, n))
    return m @ m.T / n + 0.3 * np.eye(n)


@pytest.mark.parametrize("backend", ["closed_form", "cvxpylayers_dual"])
@pytest.mark.parametrize("kind", ["case0", "case1", "case2", "case3", "near_parallel", "no_b"])
def test_implicit_steps_differentiate_like_the_two_column_solve(kind, backend):
    """implicit_steps (one reverse solve per instance, through the forms q, r, s) gives the
    value and the gradients w.r.t. g, b, c and the metric's own parameters of cpo_step with
    its implicitly differentiated solve of both H⁻¹g and H⁻¹b."""
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{backend}".encode()))
    g, b, c, delta = make_instance(rng, "case2" if kind in ("near_parallel", "no_b") else kind)
    n = g.size
    if kind == "near_parallel":  # A = q − r²/s ≈ 1e-10·q: A's value from the precise product
        noise = rng.standard_normal(n)
        g = 1.5 * b + 1e-5 * np.linalg.norm(b) * noise / np.linalg.norm(noise)
    base = torch.tensor(random_spd(rng, n))
    theta = torch.tensor(rng.uniform(0.5, 1.5, n), requires_grad=True)
    leaves = [torch.tensor(g, requires_grad=True), torch.tensor(c, requires_grad=True), theta]
    b_t = None if kind == "no_b" else torch.tensor(b, requires_grad=True)
    leaves += [] if b_t is None else [b_t]
    cot = torch.tensor(rng.standard_normal(n))

    def metric() -> torch.Tensor:
        return base + torch.diag(theta)

    ref = cpo_step(leaves[0], b_t, leaves[1], delta, hvp=lambda u: metric() @ u,
                   backend=backend, cg_iters=4 * n, cg_tol=1e-30)
    ref_grads = torch.autograd.grad(ref.x @ cot, leaves, materialize_grads=True)
    instance = check_inputs(leaves[0], b_t, leaves[1], delta)
    h = metric()
    rhs = leaves[0] if b_t is None else torch.stack([leaves[0], b_t], dim=1)
    solved = torch.linalg.solve(h.detach(), rhs.detach().reshape(n, -1))
    pair = (solved[:, 0], solved[:, 1] if b_t is not None else torch.zeros(n, dtype=T))
    (step,) = implicit_steps([instance], [pair], h @ solved,
                             lambda y: torch.linalg.solve(h.detach(), y), backend=backend)
    assert step.case == ref.case
    if kind == "near_parallel":
        assert 0 < float(step.q - step.r ** 2 / step.s) < 1.5e-8 * float(step.q)
    torch.testing.assert_close(step.x, ref.x, rtol=1e-7, atol=1e-10)
    for got, want in zip(torch.autograd.grad(step.x @ cot, leaves, materialize_grads=True),
                         ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["case0", "case1", "case2", "case3", "parallel_neg", "c_zero"])
def test_metric_hvp_agrees_with_independent_solve(kind, independent):
    """Non-identity SPD H through hvp: closed form (CG) and the dual layer vs cvxpy."""
    rng = np.random.default_rng(7 + len(kind))
    for _ in range(6):
        g_np, b_np, _, delta = make_instance(rng, kind)
        n = g_np.size
        h_np = random_spd(rng, n)
        s_h = b_np @ np.linalg.solve(h_np, b_np)
        t = {"case0": 2.0, "case1": 0.5, "case2": -0.5, "case3": -2.0}.get(
            kind, rng.uniform(-0.9, 0.9))
        c_np = 0.0 if kind == "c_zero" else t * math.sqrt(2 * delta * s_h)
        h = torch.tensor(h_np)
        inputs = tensors(g_np, b_np, c_np)
        cot = torch.randn(n, dtype=T)
        kw = dict(hvp=lambda v: h @ v, cg_iters=3 * n, cg_tol=1e-30)
        cf = cpo_step(*inputs, delta, backend="closed_form", **kw)
        du = cpo_step(*inputs, delta, backend="cvxpylayers_dual", **kw)
        status, x_ref = independent.solve(g_np, b_np, c_np, delta, h=h_np)
        assert status == ("recovery" if cf.case == 0 else "optimal")
        np.testing.assert_allclose(cf.x.detach().numpy(), x_ref, atol=1e-7, rtol=0)
        np.testing.assert_allclose(du.x.detach().numpy(), x_ref, atol=1e-7, rtol=0)
        assert_kkt(cf, inputs[0].detach(), inputs[1].detach(), inputs[2].detach(), delta, h=h,
                   tol=1e-8)
        for ga, gb in zip(vjp(cf, inputs, cot), vjp(du, inputs, cot)):
            assert float((ga - gb).abs().max()) <= 1e-5 * (1.0 + float(gb.abs().max()))


# --------------------------------------------------------------------------------------
# gradcheck of the closed form in every case (away from case boundaries)

GRADCHECK_C = {0: 2.0, 1: 0.5, 2: -0.5, 3: -2.0}


@pytest.mark.parametrize("case", [0, 1, 2, 3, 4])
def test_gradcheck_closed_form(case):
    rng = np.random.default_rng(100 + case)
    n, delta = 4, 0.05
    g = torch.tensor(rng.standard_normal(n), requires_grad=True)
    b_np = rng.standard_normal(n) * (1e-6 if case == 4 else 1.0)
    b = torch.tensor(b_np, requires_grad=True)
    c_val = -0.3 if case == 4 else GRADCHECK_C[case] * math.sqrt(2 * delta) * np.linalg.norm(b_np)
    if case == 2:  # make the constraint active: point g into the cost direction
        g = torch.tensor(b_np + 0.5 * rng.standard_normal(n), requires_grad=True)
    c = torch.tensor(c_val, dtype=T, requires_grad=True)

    def fn(g, b, c):
        st = cpo_step(g, b, c, delta)
        assert st.case == case
        return st.x, st.lam, st.nu

    assert torch.autograd.gradcheck(fn, (g, b, c))
    if case in (1, 2):
        assert float(cpo_step(g, b, c, delta).nu) > 0  # the active-constraint branch


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_gradcheck_through_hvp_graph(case):
    """x is differentiable w.r.t. the parameters hvp is built from (unrolled CG)."""
    rng = np.random.default_rng(200 + case)
    n, delta = 4, 0.05
    g = torch.tensor(rng.standard_normal(n), requires_grad=True)
    b_np = rng.standard_normal(n)
    b = torch.tensor(b_np, requires_grad=True)
    if case == 2:
        g = torch.tensor(b_np + 0.5 * rng.standard_normal(n), requires_grad=True)
    m = torch.tensor(rng.standard_normal((n, n)) / 2, requires_grad=True)
    h0 = (m @ m.T + torch.eye(n, dtype=T)).detach()
    s0 = float(b.detach() @ torch.linalg.solve(h0, b.detach()))
    c = torch.tensor(GRADCHECK_C[case] * math.sqrt(2 * delta * s0), dtype=T, requires_grad=True)

    def fn(g, b, c, m):
        h = m @ m.T + torch.eye(n, dtype=T)
        st = cpo_step(g, b, c, delta, hvp=lambda v: h @ v, cg_iters=n, cg_tol=0.0)
        assert st.case == case
        return st.x

    assert torch.autograd.gradcheck(fn, (g, b, c, m))


# --------------------------------------------------------------------------------------
# feasibility, recovery, degenerate inputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_feasible_problem_gives_feasible_step(backend):
    rng = np.random.default_rng(3)
    for kind in ["case1", "case2", "case3", "case4", "c_zero", "parallel_pos", "parallel_neg"]:
        for _ in range(4):
            g, b, c, delta = (torch.tensor(v) if isinstance(v, np.ndarray) else v
                              for v in make_instance(rng, kind))
            st = cpo_step(g, b, c, delta, backend=backend)
            assert 0.5 * float(st.x @ st.x) <= delta * (1 + 1e-7)
            assert c + float(b @ st.x) <= 1e-7 * (abs(c) + math.sqrt(2 * delta) * float(b.norm()))
            assert float(st.predicted_cost_change) == pytest.approx(float(b @ st.x))
            assert float(st.predicted_reward_change) == pytest.approx(float(g @ st.x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_problem_gives_recovery_step(backend):
    rng = np.random.default_rng(4)
    for _ in range(5):
        g, b, c, delta = make_instance(rng, "case0")
        g, b = torch.tensor(g), torch.tensor(b)
        st = cpo_step(g, b, c, delta, backend=backend)
        assert st.case == 0
        expected = -math.sqrt(2 * delta / float(b @ b)) * b
        torch.testing.assert_close(st.x, expected, rtol=1e-12, atol=1e-14)
        assert float(st.lam) == 0.0 and float(st.nu) == pytest.approx(
            math.sqrt(2 * delta / float(b @ b)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_inputs_stay_finite(backend):
    """b = 0, g = 0, c = 0, g exactly ∥ b: no NaN in x or in any gradient."""
    n, delta = 6, 0.02
    base = torch.linspace(-1.0, 2.0, n, dtype=T)
    zeros = torch.zeros(n, dtype=T)
    cases = [
        (base, zeros, -0.1),          # b = 0, feasible → TRPO
        (base, zeros, 0.1),           # b = 0, infeasible → x = 0
        (zeros, base, -0.01),         # g = 0
        (zeros, base, 0.01),          # g = 0, c > 0: min-norm feasible point
        (base, base.flip(0), 0.0),             # c = 0
        (2.0 * base, base, 0.05),              # g = 2b, c > 0: active, λ → 0
        (2.0 * base, base, -0.05),             # g = 2b, c < 0
        (-2.0 * base, base, 0.05),             # g = −2b
    ]
    for g0, b0, c0 in cases:
        g, b, c = (g0.clone().requires_grad_(), b0.clone().requires_grad_(),
                   torch.tensor(c0, dtype=T, requires_grad=True))
        st = cpo_step(g, b, c, delta, backend=backend)
        for t in (st.x, st.lam, st.nu, st.q, st.r, st.s):
            assert torch.isfinite(t).all()
        grads = torch.autograd.grad(st.x.sum() + st.lam + st.nu, (g, b, c), allow_unused=True)
        assert all(gr is None or torch.isfinite(gr).all() for gr in grads)
        if st.case != 0:  # feasible: the step is feasible and optimal
            assert 0.5 * float(st.x @ st.x) <= delta * (1 + 1e-7)
            assert c0 + float(b0 @ st.x) <= 1e-7


def test_parallel_degenerate_step_is_optimal(independent):
    """g = αb (α > 0), cost constraint active: every point of the face is optimal."""
    rng = np.random.default_rng(5)
    b_np = rng.standard_normal(7)
    g_np, delta = 1.5 * b_np, 0.1
    c_np = 0.4 * math.sqrt(2 * delta) * np.linalg.norm(b_np)
    st = cpo_step(torch.tensor(g_np), torch.tensor(b_np), c_np, delta)
    _, x_ref = independent.solve(g_np, b_np, c_np, delta)
    assert float(st.predicted_reward_change) == pytest.approx(g_np @ x_ref, rel=1e-8)
    assert c_np + b_np @ st.x.numpy() == pytest.approx(0.0, abs=1e-12)


def test_trpo_step_when_b_is_none():
    rng = np.random.default_rng(6)
    g = torch.tensor(rng.standard_normal(9))
    for hvp in (None, lambda v: 3.0 * v):
        st = cpo_step(g, None, 0.7, 0.01, hvp=hvp)
        h = 1.0 if hvp is None else 3.0
        assert st.case == 4
        torch.testing.assert_close(st.x, math.sqrt(2 * 0.01 / float(g @ g / h)) * g / h)
        assert float(st.r) == 0.0 and float(st.s) == 0.0 and float(st.nu) == 0.0
        assert float(st.predicted_cost_change) == 0.0
        assert float(st.lam) == pytest.approx(math.sqrt(float(g @ g / h) / 0.02))


# --------------------------------------------------------------------------------------
# case numbering from the definitions


def test_case_numbering_matches_definitions():
    """2-D geometry, H = I, δ = ½ (unit ball), g = e₁, b = e₂: plane x₂ = −c."""
    g, b = torch.tensor([1.0, 0.0], dtype=T), torch.tensor([0.0, 1.0], dtype=T)
    # 0: plane x₂ = −2 misses the ball and 0 is infeasible
    assert cpo_step(g, b, 2.0, 0.5).case == 0
    # 1: 0 infeasible (c > 0) but the plane x₂ = −0.5 meets the ball
    assert cpo_step(g, b, 0.5, 0.5).case == 1
    # 2: 0 feasible and the plane x₂ = 0.5 cuts the ball
    assert cpo_step(g, b, -0.5, 0.5).case == 2
    # 3: the plane x₂ = 2 is outside the ball: whole trust region feasible
    assert cpo_step(g, b, -2.0, 0.5).case == 3
    # 4: b ≈ 0 with c ≤ 0, or no b at all
    assert cpo_step(g, 1e-9 * b, -0.5, 0.5).case == 4
    assert cpo_step(g, None, 0.5, 0.5).case == 4
    # c = 0: origin feasible, plane through it → 2
    assert cpo_step(g, b, 0.0, 0.5).case == 2
    # b ≈ 0 but c > 0: nothing can reach feasibility → 0
    assert cpo_step(g, 1e-9 * b, 0.5, 0.5).case == 0
    # boundary: the plane tangent to the ball counts as intersecting (B = 0 → case 1)
    assert classify(1.0, 0.0, 1.0, 1.0, 0.5, 1.0) == 1
    # multipliers: case 1 solution is x = (√0.75, −0.5), λ = 1/√0.75, ν = 0.5·λ
    st = cpo_step(g, b, 0.5, 0.5)
    torch.testing.assert_close(st.x, torch.tensor([math.sqrt(0.75), -0.5], dtype=T))
    assert float(st.lam) == pytest.approx(1 / math.sqrt(0.75))
    assert float(st.nu) == pytest.approx(0.5 / math.sqrt(0.75))


# --------------------------------------------------------------------------------------
# errors, dtypes, sizes


@pytest.mark.parametrize("bad", ["g", "b", "c", "delta"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_input_raises(bad, value):
    args = {"g": torch.ones(3, dtype=T), "b": torch.ones(3, dtype=T), "c": 0.1, "delta": 0.01}
    if bad in ("g", "b"):
        args[bad] = args[bad].clone()
        args[bad][1] = value
    else:
        args[bad] = value
    with pytest.raises(ValueError, match=bad):
        cpo_step(args["g"], args["b"], args["c"], args["delta"])


def test_bad_arguments_raise():
    g, b = torch.ones(3, dtype=T), torch.ones(3, dtype=T)
    with pytest.raises(ValueError, match="backend"):
        cpo_step(g, b, 0.1, 0.01, backend="nope")
    with pytest.raises(ValueError, match="delta"):
        cpo_step(g, b, 0.1, 0.0)
    with pytest.raises(ValueError, match="delta"):
        cpo_step(g, b, 0.1, -1.0)
    with pytest.raises(ValueError, match="hvp"):
        cpo_step(g, b, 0.1, 0.01, hvp=lambda v: v, backend="cvxpylayers_primal")
    with pytest.raises(ValueError, match="b must"):
        cpo_step(g, torch.ones(4, dtype=T), 0.1, 0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32(backend):
    rng = np.random.default_rng(8)
    for kind in ["case1", "case2", "case3", "case0"]:
        g, b, c, delta = make_instance(rng, kind)
        ref = cpo_step(torch.tensor(g), torch.tensor(b), c, delta)
        g32 = torch.tensor(g, dtype=torch.float32, requires_grad=True)
        st = cpo_step(g32, torch.tensor(b, dtype=torch.float32), c, delta, backend=backend)
        assert st.x.dtype == torch.float32 and st.lam.dtype == torch.float32
        np.testing.assert_allclose(st.x.detach().numpy(), ref.x.numpy(), atol=1e-4, rtol=0)
        if st.case != 0:  # the recovery step does not depend on g
            (gx,) = torch.autograd.grad(st.x.sum(), g32)
            assert gx.dtype == torch.float32 and torch.isfinite(gx).all()


@pytest.mark.parametrize("backend", ["closed_form", "cvxpylayers_dual"])
def test_large_n_no_dense_matrices(backend):
    n = 100_000
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(n, generator=gen, dtype=torch.float32, requires_grad=True)
    b = torch.randn(n, generator=gen, dtype=torch.float32)
    st = cpo_step(g, b, 0.5, 0.01, backend=backend, hvp=lambda v: 2.0 * v, cg_iters=3)
    st.x.sum().backward()
    assert st.case == 1 and torch.isfinite(g.grad).all()
    assert 0.5 * float(2.0 * st.x @ st.x) <= 0.01 * (1 + 1e-3)


# --------------------------------------------------------------------------------------
# linalg


def test_conjugate_gradient_single_and_multiple_rhs():
    rng = np.random.default_rng(9)
    n = 12
    h = torch.tensor(random_spd(rng, n))
    v = torch.tensor(rng.standard_normal((n, 3)))
    for damping in (0.0, 0.1):
        hd = h + damping * torch.eye(n, dtype=T)
        x = conjugate_gradient(lambda u: h @ u, v, iters=3 * n, damping=damping, tol=1e-30)
        torch.testing.assert_close(x, torch.linalg.solve(hd, v))
        x1 = conjugate_gradient(lambda u: h @ u, v[:, 0], iters=3 * n, damping=damping,
                                tol=1e-30)
        torch.testing.assert_close(x1, torch.linalg.solve(hd, v[:, 0]))
        xb = conjugate_gradient(lambda u: h @ u, v, iters=3 * n, damping=damping, tol=1e-30,
                                batched_hvp=True)
        torch.testing.assert_close(xb, x)


def test_conjugate_gradient_zero_rhs_and_early_stop():
    h = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=T))
    calls = []

    def hvp(u):
        calls.append(1)
        return h @ u

    zero = torch.zeros(3, dtype=T)
    assert torch.equal(conjugate_gradient(hvp, zero, iters=10), zero)
    assert not calls  # converged before the first product
    v = torch.stack([zero, torch.ones(3, dtype=T)], dim=1)  # one column already solved
    x = conjugate_gradient(hvp, v, iters=10, tol=1e-28)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[:, 1], torch.tensor([1.0, 0.5, 1 / 3], dtype=T))


def test_conjugate_gradient_block_columns_equal_solving_each_alone():
    """A column that converges early stops changing: in a block it gets exactly the value
    it gets when solved alone (the batched solves of several tasks rely on this)."""
    h = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=T))
    v = torch.tensor([[1.0, 1.0], [0.01, 1.0], [0.01, 1.0], [0.01, 1.0]], dtype=T)
    block = conjugate_gradient(lambda u: h @ u, v, iters=4, tol=1e-3, batched_hvp=True)
    alone = [conjugate_gradient(lambda u: h @ u, v[:, j], iters=4, tol=1e-3) for j in range(2)]
    # column 0 is within tol after one step (not exactly solved), column 1 takes four
    assert not torch.equal(alone[0], torch.linalg.solve(h, v[:, 0]))
    for j in range(2):
        assert torch.equal(block[:, j], alone[j])
    torch.testing.assert_close(block[:, 1], torch.linalg.solve(h, v[:, 1]))


def test_safe_helpers_have_finite_gradients():
    x = torch.tensor([0.0, 4.0], dtype=T, requires_grad=True)
    y = safe_sqrt(x).sum() + safe_div(torch.ones(2, dtype=T), x).sum()
    (gx,) = torch.autograd.grad(y, x)
    assert torch.isfinite(gx).all()
    assert float(safe_div(torch.tensor(1.0, dtype=T), torch.tensor(0.0, dtype=T))) == 0.0


def test_multipliers_match_piecewise_dual():
    """λ*, ν* in cases 1–2 equal the appendix-style solution of the dual: minimise the two
    pieces D_a(λ) = ½(A/λ + Bλ) − rc/s (ν > 0, i.e. λc + r > 0) and D_b(λ) = q/(2λ) + λδ
    (ν = 0) over their λ-intervals, keep the smaller, ν* = max(0, (λ*c + r)/s)."""
    rng = np.random.default_rng(11)
    checked = 0
    for kind in ["case1", "case2", "c_zero", "parallel_neg"] * 10:
        g, b, c, delta = make_instance(rng, kind)
        q, r, s = g @ g, g @ b, b @ b
        big_a, big_b = q - r * r / s, 2 * delta - c * c / s
        # λ-interval where ν(λ) = (λc + r)/s > 0, and its complement
        if c > 0:
            ia, ib = (max(0.0, -r / c), math.inf), (0.0, max(0.0, -r / c))
        elif c < 0:
            ia, ib = (0.0, max(0.0, -r / c)), (max(0.0, -r / c), math.inf)
        else:
            ia, ib = ((0.0, math.inf), (0.0, 0.0)) if r > 0 else ((0.0, 0.0), (0.0, math.inf))
        cands = []
        if ia[1] > ia[0]:
            lam_a = min(max(math.sqrt(big_a / big_b), ia[0]), ia[1])
            cands.append((0.5 * (big_a / lam_a + big_b * lam_a) - r * c / s, lam_a))
        if ib[1] > ib[0]:
            lam_b = min(max(math.sqrt(q / (2 * delta)), ib[0]), ib[1])
            cands.append((q / (2 * lam_b) + lam_b * delta, lam_b))
        lam = min(cands)[1]
        nu = max(0.0, (lam * c + r) / s)
        st = cpo_step(torch.tensor(g), torch.tensor(b), c, delta)
        assert st.case in (1, 2)
        assert float(st.lam) == pytest.approx(lam, rel=1e-9)
        assert float(st.nu) == pytest.approx(nu, rel=1e-9, abs=1e-12 * lam)
        checked += 1
    assert checked == 40


@pytest.mark.parametrize("case", [1, 2, 3])
def test_gradgradcheck_closed_form(case):
    """Second derivatives (needed when a meta-objective is itself differentiated twice)."""
    rng = np.random.default_rng(300 + case)
    n, delta = 3, 0.05
    b_np = rng.standard_normal(n)
    g_np = b_np + 0.5 * rng.standard_normal(n) if case == 2 else rng.standard_normal(n)
    g, b = torch.tensor(g_np, requires_grad=True), torch.tensor(b_np, requires_grad=True)
    c = torch.tensor(GRADCHECK_C[case] * math.sqrt(2 * delta) * np.linalg.norm(b_np), dtype=T,
                     requires_grad=True)

    def fn(g, b, c):
        st = cpo_step(g, b, c, delta)
        assert st.case == case
        return st.x

    assert torch.autograd.gradgradcheck(fn, (g, b, c))
