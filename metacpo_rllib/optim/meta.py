"""The one update of all four algorithms: K inner CPO steps per task, then an outer CPO step.

``meta_update`` with ``inner_steps = K > 0`` is Meta-CPO (Meta-TRPO with
``constrained=False``); with K = 0 it is a plain CPO (TRPO) update on the given batches.
Inner steps are differentiated exactly (second order, full Jacobian) unless ``first_order``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from metacpo_rllib.optim.batch import Batch
from metacpo_rllib.optim.cpo import (BACKENDS, CASE_INFEASIBLE, CASES, RESTORING_CASES,
                                     CPOStep, NonFiniteError, check_inputs,
                                     steps_from_solutions)
from metacpo_rllib.optim.implicit import ReverseSolve, implicit_steps
from metacpo_rllib.optim.linalg import conjugate_gradient
from metacpo_rllib.optim.line_search import LineSearchResult, line_search
from metacpo_rllib.optim.policy import Params, add_step, detached, flatten
from metacpo_rllib.optim.surrogate import fisher_product, mean_kl, surrogates

METRICS = ("fisher", "euclidean")


@dataclasses.dataclass
class UpdateConfig:
    """Settings of the update (trust-region radii are KL for "fisher", ½‖x‖² for "euclidean")."""

    inner_steps: int = 1            # K; 0 = no inner loop (CPO / TRPO)
    constrained: bool = True        # False: TRPO steps (Meta-TRPO / TRPO)
    delta: float = 0.01             # outer trust-region radius
    inner_delta: float = 0.01       # inner (adaptation) trust-region radius
    metric: str = "fisher"
    backend: str = "closed_form"
    cg_iters: int = 10
    cg_damping: float = 0.1
    cg_tol: float = 1e-10           # CG stops once the squared residual is below this
    fisher_stride: int = 1          # the Fisher metric is estimated on every k-th state
    line_search_steps: int = 15
    line_search_decay: float = 0.8
    first_order: bool = False
    #: c > 0 always takes the pure recovery step (case 0), also where case 1 would trade
    #: reward against cost (``cpo.classify``)
    recover_when_violating: bool = False
    #: scale each batch's cost gradient by its cross-fitted signal share before any step
    #: (``cost_estimate.shrink_cost_gradient``; applied where the batches are built)
    cost_signal_share: bool = False
    #: the radius of an inner step is ``inner_delta`` times ``inner_cost_free_scale`` when
    #: its batch saw no cost, times ``inner_recovery_scale`` when its c > 0 (constrained
    #: only): the rule of test-time adaptation steps, so that θ can be meta-trained for the
    #: step it will take (:func:`inner_radius`); 1.0 and 1.0: every inner step ``inner_delta``
    inner_cost_free_scale: float = 1.0
    inner_recovery_scale: float = 1.0
    #: the outer step's radius is ``delta`` times this when its constraint value c > 0
    #: (constrained only; test-time steps scale their radius before, and keep 1 here)
    outer_recovery_scale: float = 1.0
    #: meta algorithms (constrained): the outer step keeps max(J_C(θ), J_C(φ(θ))) ≤ h, the
    #: cost of θ's own batches (round 0) beside its adapted policies' (:func:`meta_update`)
    theta_cost_constraint: bool = False
    #: k >= 0 (0: off; test-time steps only, the radius then depends on θ through b): a
    #: constrained step whose c < 0 takes radius min(δ, (k·c)² / (2 bᵀH⁻¹b)), so that no
    #: direction of its trust region raises the first-order cost model by more than k times
    #: the room −c (:func:`room_capped`)
    cost_room: float = 0.0

    def validate(self) -> "UpdateConfig":
        """Raise ValueError naming the first invalid field."""
        def bad(field: str, why: str) -> None:
            raise ValueError(f"{field}: {why}, got {getattr(self, field)!r}")

        if not isinstance(self.inner_steps, int) or isinstance(self.inner_steps, bool) \
                or self.inner_steps < 0:
            bad("inner_steps", "expected an integer >= 0")
        for field in ("constrained", "first_order", "recover_when_violating",
                      "cost_signal_share", "theta_cost_constraint"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "expected a bool")
        for field in ("delta", "inner_delta"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                bad(field, "expected a finite number > 0")
        if not isinstance(self.inner_cost_free_scale, (int, float)) \
                or not 0 < self.inner_cost_free_scale <= 1:
            bad("inner_cost_free_scale", "expected a number in (0, 1]")
        for field in ("inner_recovery_scale", "outer_recovery_scale"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 1 <= value < math.inf:
                bad(field, "expected a finite number >= 1")
        if self.metric not in METRICS:
            bad("metric", f"expected one of {METRICS}")
        if self.backend not in BACKENDS:
            bad("backend", f"expected one of {BACKENDS}")
        if self.backend == "cvxpylayers_primal" and self.metric != "euclidean":
            bad("backend", "cvxpylayers_primal needs metric='euclidean'")
        for field in ("cg_iters", "line_search_steps", "fisher_stride"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(field, "expected an integer >= 1")
        for field in ("cg_damping", "cg_tol"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value) or not value >= 0:
                bad(field, "expected a finite number >= 0")
        if not isinstance(self.line_search_decay, (int, float)) \
                or not 0 < self.line_search_decay < 1:
            bad("line_search_decay", "expected a number in (0, 1)")
        if not isinstance(self.cost_room, (int, float)) or isinstance(self.cost_room, bool) \
                or not 0 <= self.cost_room < math.inf:
            bad("cost_room", "expected a finite number >= 0")
        return self


def room_capped(instances: Sequence[tuple[Tensor, Optional[Tensor], Tensor, Tensor]],
                solutions: Sequence[tuple[Tensor, Tensor]], k: float
                ) -> list[tuple[Tensor, Optional[Tensor], Tensor, Tensor]]:
    """``instances`` (g, b, c, δ) with δ of each one whose c < 0 and s = bᵀH⁻¹b > 0 (w =
    H⁻¹b its second solution) replaced by min(δ, (k·c)² / (2s)); ``k`` = 0: unchanged
    (``UpdateConfig.cost_room`` off).

    In the trust region ½ xᵀHx ≤ δ the largest first-order cost change is √(2δs); with the
    capped radius it is at most k·(−c), k times the room left under the limit, whatever the
    step's direction (a noisy b inflates s, which only shrinks the radius). Constants of θ
    here: for test-time steps, not for steps a meta-gradient differentiates."""
    if not k:
        return list(instances)
    capped = []
    for (g, b, c, delta), (_, w) in zip(instances, solutions):
        s = float(torch.dot(b, w)) if b is not None else 0.0
        if float(c) < 0.0 and s > 0.0:
            delta = torch.clamp(delta, max=(k * float(c)) ** 2 / (2.0 * s))
        capped.append((g, b, c, delta))
    return capped


def inner_radius(batch: Batch, cfg: UpdateConfig) -> float:
    """The trust-region radius of an inner step on ``batch``: ``inner_delta``, times
    ``inner_cost_free_scale`` if the batch saw no cost, times ``inner_recovery_scale`` if
    the step is constrained and the batch's c > 0. Batch data only, so the choice is a
    constant of θ and the meta-gradient stays exact."""
    scale = cfg.inner_cost_free_scale if batch.cost_free else 1.0
    if cfg.constrained and batch.violating:
        scale *= cfg.inner_recovery_scale
    return cfg.inner_delta * scale


def constrained_steps(
    module: nn.Module,
    params: Sequence[Params],
    gs: Sequence[Tensor],
    bs: Sequence[Tensor | None],
    cs: Sequence[float | Tensor],
    delta: float | Sequence[float],
    metric_obs: Sequence[Tensor],
    cfg: UpdateConfig,
    create_graph: bool,
    known: Tensor | None = None,
) -> list[CPOStep]:
    """cpo_step for several instances at once (instance i: gradients ``gs[i]``, ``bs[i]``,
    constraint value ``cs[i]``, parameters ``params[i]``, radius ``delta`` or ``delta[i]``),
    in the configured metric.

    The Fisher metric of instance i is taken at ``params[i]`` on every
    ``cfg.fisher_stride``-th state of ``metric_obs[i]`` (consecutive states of an episode
    carry nearly the same information, and each product costs time linear in the states).
    All instances' solves (H_i⁻¹g_i and H_i⁻¹b_i) run as one conjugate gradient with one
    block product per iteration. ``known``: that solve's value, computed before (columns
    g_1, b_1, g_2, ...); its CG is skipped. A non-finite input raises NonFiniteError with
    ``index`` = the instance's position.

    With ``create_graph`` the steps are differentiated implicitly (``implicit.implicit_steps``:
    one solve per instance in each reverse pass, all instances in one CG).
    """
    deltas = list(delta) if isinstance(delta, (list, tuple)) else [delta] * len(gs)
    checked = []
    for i, (g, b, c, radius) in enumerate(zip(gs, bs, cs, deltas)):
        try:
            checked.append(check_inputs(g, b, c, radius))
        except NonFiniteError as err:
            err.index = i
            raise
    graph = create_graph and torch.is_grad_enabled()
    if cfg.cost_room and graph:
        raise ValueError("cost_room: test-time steps only (its radius is not differentiated)")
    if cfg.metric == "euclidean":
        pairs = [(g, torch.zeros_like(g) if b is None else b) for g, b, _, _ in checked]
        return steps_from_solutions(
            room_capped(checked, pairs, cfg.cost_room), pairs, identity_metric=True,
            backend=cfg.backend, recover_when_violating=cfg.recover_when_violating)
    width = 1 if checked[0][1] is None else 2
    rhs = torch.stack([col for g, b, _, _ in checked for col in ((g,) if b is None else (g, b))],
                      dim=1)
    states = [o[::cfg.fisher_stride] for o in metric_obs]
    hvp = fisher_product(module, [p for p in params for _ in range(width)],
                         [o for o in states for _ in range(width)], create_graph=create_graph)
    if known is None:
        known = conjugate_gradient(hvp.without_graph, rhs.detach(), cfg.cg_iters,
                                   cfg.cg_damping, cfg.cg_tol, batched_hvp=True)
    # contiguous columns: their dot products round alike whichever way they were solved
    columns = [col.contiguous() for col in known.detach().unbind(1)]
    pairs = [(columns[width * i], columns[width * i + 1] if width == 2
              else torch.zeros_like(columns[width * i])) for i in range(len(checked))]
    if not graph:
        return steps_from_solutions(
            room_capped(checked, pairs, cfg.cost_room), pairs, identity_metric=False,
            backend=cfg.backend, recover_when_violating=cfg.recover_when_violating)
    # A [v w], differentiable w.r.t. the parameters; the reverse pass solves one column each
    products = hvp(known) + cfg.cg_damping * known
    reverse = ReverseSolve(module, params, states, hvp, width, cfg.cg_iters, cfg.cg_damping,
                           cfg.cg_tol)
    return implicit_steps(checked, pairs, products, reverse, backend=cfg.backend,
                          recover_when_violating=cfg.recover_when_violating)


def constrained_step(
    module: nn.Module,
    params: Params,
    g: Tensor,
    b: Tensor | None,
    c: float | Tensor,
    delta: float,
    metric_obs: Tensor,
    cfg: UpdateConfig,
    create_graph: bool,
) -> CPOStep:
    """:func:`constrained_steps` for one instance."""
    return constrained_steps(module, [params], [g], [b], [c], delta, [metric_obs], cfg,
                             create_graph)[0]


def inner_steps(
    module: nn.Module,
    params: Sequence[Params],
    batches: Sequence[Batch],
    cfg: UpdateConfig,
    create_graph: bool,
    solves: Optional[Sequence[Tensor]] = None,
) -> tuple[list[Params], list[CPOStep]]:
    """One adaptation step φ_i' = φ_i + x*(g_i(φ_i), b_i(φ_i), c_i) per task i, taking task
    i's step from ``params[i]`` on ``batches[i]`` (radius :func:`inner_radius`); the tasks'
    metric solves run together (:func:`constrained_steps`).

    With ``create_graph`` the steps stay differentiable w.r.t. ``params`` (and what they
    were computed from); otherwise the returned parameters are new leaves.
    ``solves``: per task the ``CPOStep.metric_solution`` of these very steps taken before
    (same parameter values, batches and settings, all tasks in one call), e.g. the
    learner's inner steps that the meta-gradient replays; with the Fisher metric their
    conjugate gradient is skipped.
    """
    gs, bs = [], []
    for phi, batch in zip(params, batches):
        tensors = list(phi.values())
        reward, cost = surrogates(module, phi, batch)
        gs.append(flatten(torch.autograd.grad(reward, tensors, create_graph=create_graph,
                                              retain_graph=True)))
        bs.append(flatten(torch.autograd.grad(cost, tensors, create_graph=create_graph))
                  if cfg.constrained else None)
    known = None
    if solves is not None and cfg.metric == "fisher":  # only the Fisher metric has a solve
        if len(solves) != len(batches):
            raise ValueError(f"solves: need one per task ({len(batches)}), got {len(solves)}")
        width = 2 if cfg.constrained else 1
        known = torch.cat([solve[:, :width] for solve in solves], dim=1)
    steps = constrained_steps(module, params, gs, bs,
                              [batch.constraint_value for batch in batches],
                              [inner_radius(batch, cfg) for batch in batches],
                              [batch.obs for batch in batches], cfg, create_graph, known)
    if create_graph:
        return [add_step(phi, step.x) for phi, step in zip(params, steps)], steps
    return [detached(add_step(phi, step.x.detach())) for phi, step in zip(params, steps)], steps


def inner_step(
    module: nn.Module, params: Params, batch: Batch, cfg: UpdateConfig, create_graph: bool
) -> tuple[Params, CPOStep]:
    """:func:`inner_steps` for one task."""
    new, steps = inner_steps(module, [params], [batch], cfg, create_graph)
    return new[0], steps[0]


def adapt_tasks(
    module: nn.Module,
    params: Params,
    support: Sequence[Sequence[Batch]],
    cfg: UpdateConfig,
    create_graph: bool = False,
    solves: Optional[Sequence[Sequence[Tensor]]] = None,
) -> tuple[list[Params], list[list[CPOStep]]]:
    """Adapt ``params`` to every task: task i takes one inner step per batch of
    ``support[i]`` in order (batch k sampled by its k-th adapted policy); step k of all
    tasks is taken together (:func:`inner_steps`). Returns each task's adapted parameters
    and its steps. ``solves[i][k]``: the metric solution of task i's step k taken before
    from the same ``params`` (see :func:`inner_steps`).

    With ``first_order`` the steps are added as constants: gradients pass straight
    through to ``params`` (first-order MAML).
    """
    rounds = {len(s) for s in support}
    if len(rounds) > 1:
        raise ValueError(f"support: every task needs the same number of batches, got {rounds}")
    phis = [params] * len(support)
    steps: list[list[CPOStep]] = [[] for _ in support]
    for k in range(rounds.pop() if rounds else 0):
        new, taken = inner_steps(module, phis, [s[k] for s in support], cfg,
                                 create_graph=create_graph and not cfg.first_order,
                                 solves=None if solves is None else [t[k] for t in solves])
        if create_graph and cfg.first_order:
            new = [add_step(phi, step.x.detach()) for phi, step in zip(phis, taken)]
        phis = new
        for task_steps, step in zip(steps, taken):
            task_steps.append(step)
    return phis, steps


def adapt(
    module: nn.Module,
    params: Params,
    batches: Sequence[Batch],
    cfg: UpdateConfig,
    create_graph: bool = False,
) -> tuple[Params, list[CPOStep]]:
    """:func:`adapt_tasks` for one task: one inner step per batch, in order."""
    phis, steps = adapt_tasks(module, params, [batches], cfg, create_graph)
    return phis[0], steps[0]


def query_objectives(
    module: nn.Module,
    params: Params,
    support: Sequence[Sequence[Batch]],
    query: Sequence[Batch],
    cfg: UpdateConfig,
    create_graph: bool,
    solves: Optional[Sequence[Sequence[Tensor]]] = None,
) -> tuple[Tensor, Tensor, list[CPOStep]]:
    """Meta-objective and meta-constraint surrogate: the mean over tasks of the reward and
    cost surrogates of the adapted parameters φ_i^K(params) on the query batches
    (``solves``: see :func:`adapt_tasks`)."""
    reward, cost, task_steps = _task_objectives(module, params, support, query, cfg,
                                                create_graph, solves)
    return reward, cost, [step for steps in task_steps for step in steps]


def _task_objectives(module: nn.Module, params: Params, support: Sequence[Sequence[Batch]],
                     query: Sequence[Batch], cfg: UpdateConfig, create_graph: bool,
                     solves: Optional[Sequence[Sequence[Tensor]]]
                     ) -> tuple[Tensor, Tensor, list[list[CPOStep]]]:
    """:func:`query_objectives` with the inner steps kept per task."""
    phis, task_steps = adapt_tasks(module, params, support, cfg, create_graph=create_graph,
                                   solves=solves)
    rewards, costs = zip(*(surrogates(module, phi, batch) for phi, batch in zip(phis, query)))
    return torch.stack(rewards).mean(), torch.stack(costs).mean(), task_steps


def meta_gradients(
    module: nn.Module,
    theta: Params,
    support: Sequence[Sequence[Batch]],
    query: Sequence[Batch],
    cfg: UpdateConfig,
    solves: Optional[Sequence[Sequence[Tensor]]] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, list[CPOStep]]:
    """Meta-objective and meta-constraint surrogates at ``theta`` (leaves requiring grad)
    and their exact gradients g, b w.r.t. theta: one reverse pass each through all K inner
    steps of every task (b is None when unconstrained). ``solves``: the metric solutions
    of the inner steps already taken from ``theta`` (:func:`adapt_tasks`).

    Both passes meet the last inner steps' solve with right-hand sides known in advance
    (the query gradients w.r.t. the last steps): they are solved together, in one CG, and
    each pass is handed its solution.
    """
    tensors = list(theta.values())
    reward, cost, task_steps = _task_objectives(module, theta, support, query, cfg,
                                                create_graph=True, solves=solves)
    inner = [step for steps in task_steps for step in steps]
    last = [steps[-1] for steps in task_steps if steps]
    reverse = last[0].reverse_solve if last else None
    if cfg.constrained and isinstance(reverse, ReverseSolve):
        xs = [step.x for step in last]
        ahead = [torch.stack(torch.autograd.grad(out, xs, retain_graph=True), dim=1)
                 for out in (reward, cost)]
        first, second = reverse.solve_pair(*ahead)
        with reverse.reusing(first):
            g = flatten(torch.autograd.grad(reward, tensors, retain_graph=True))
        with reverse.reusing(second):
            b = flatten(torch.autograd.grad(cost, tensors))
        return reward.detach(), cost.detach(), g, b, inner
    g = flatten(torch.autograd.grad(reward, tensors, retain_graph=cfg.constrained))
    b = flatten(torch.autograd.grad(cost, tensors)) if cfg.constrained else None
    return reward.detach(), cost.detach(), g, b, inner


def meta_update(
    module: nn.Module,
    params: Params,
    support: Sequence[Sequence[Batch]],
    query: Sequence[Batch],
    cfg: UpdateConfig,
    solves: Optional[Sequence[Sequence[Tensor]]] = None,
) -> tuple[Params, dict[str, float]]:
    """One outer constrained trust-region step on θ = ``params``.

    ``support[i]`` holds task i's K batches (batch k sampled by φ_i^k, φ_i^0 = θ) and
    ``query[i]`` its batch sampled by φ_i^K. The outer constraint value is
    c = mean_i(J_C,i(φ_i^K) − h_i) from the query batches. The line search re-runs the inner
    adaptation at each candidate θ. With ``theta_cost_constraint`` (K > 0, constrained) the
    constraint is max(c, c_θ), c_θ = mean_i(J_C,i(θ) − h_i) from θ's own batches
    ``support[i][0]``: where c_θ is the larger, b and the line search's cost change are
    those of θ's cost surrogate on them (the active piece of the max).
    The radius is ``delta``, times ``outer_recovery_scale`` where c > 0 (constrained).
    ``solves[i][k]``: the ``CPOStep.metric_solution`` of task i's inner step k, when the
    caller took the inner steps from θ already (the learner's rounds): the meta-gradient's
    replay of them skips their conjugate gradient.
    Returns the new θ (detached leaves) and statistics, among them
    ``outer_theta_cost_change``: the change of θ's own cost surrogate on θ's batches along
    the kept step, whichever piece of the max was active.
    """
    if len(support) != len(query) or not query:
        raise ValueError("support/query: need one support list per query batch (>= 1 task)")
    if any(len(s) != cfg.inner_steps for s in support):
        raise ValueError(f"support: each task needs inner_steps={cfg.inner_steps} batches")
    theta = detached(params)
    reward, cost, g, b, inner = meta_gradients(module, theta, support, query, cfg, solves)
    c = float(sum(q.constraint_value for q in query) / len(query))
    # θ's own batches (round 0); without inner steps θ's batches are the query batches
    theta_batches = [s[0] for s in support] if cfg.inner_steps > 0 else []
    own = theta_batches if cfg.theta_cost_constraint and cfg.constrained else []
    c_own = float(sum(batch.constraint_value for batch in own) / len(own)) if own else -math.inf
    own_active = c_own > c
    if own_active:  # θ's own cost is the violated piece: its gradient and its value
        c = c_own
        cost = own_cost(module, theta, own)
        b = flatten(torch.autograd.grad(cost, list(theta.values())))
        cost = cost.detach()
    # The outer trust region is measured on the states θ itself visited.
    metric_obs = torch.cat([s[0].obs if s else q.obs for s, q in zip(support, query)])
    radius = cfg.delta * (cfg.outer_recovery_scale if cfg.constrained and c > 0 else 1.0)
    step = constrained_step(module, theta, g, b, c, radius, metric_obs, cfg,
                            create_graph=False)

    def evaluate(candidate: Params) -> tuple[float, float, float]:
        new_reward, new_cost, _ = query_objectives(module, candidate, support, query, cfg,
                                                   create_graph=False)
        if own_active:
            new_cost = own_cost(module, candidate, own)
        if cfg.metric == "fisher":
            kl = float(mean_kl(module, theta, candidate, metric_obs).detach())
        else:
            kl = 0.5 * float(flatten(candidate).sub(flatten(theta)).pow(2).sum())
        return (float(new_reward.detach()) - float(reward), float(new_cost.detach()) - float(cost),
                kl)

    result: LineSearchResult = line_search(
        lambda frac: detached(add_step(theta, step.x.detach(), frac)),
        evaluate,
        delta=radius,
        constraint_value=c if cfg.constrained else None,
        require_improvement=step.case not in RESTORING_CASES,
        steps=cfg.line_search_steps,
        decay=cfg.line_search_decay,
    )
    new_theta = result.params if result.accepted else detached(theta)
    info = {
        "outer_case": float(step.case),
        "outer_lam": float(step.lam),
        "outer_nu": float(step.nu),
        "outer_predicted_reward_change": float(step.predicted_reward_change) * result.fraction,
        "outer_predicted_cost_change": float(step.predicted_cost_change) * result.fraction,
        "outer_surrogate_reward_change": result.reward_change,
        "outer_surrogate_cost_change": result.cost_change,
        "outer_kl": result.kl,
        "outer_delta": float(radius),
        "outer_constraint_value": c,
        "outer_constraint_on_theta": float(own_active),
        "line_search_steps": float(result.steps_tried),
        "line_search_accepted": float(result.accepted),
    }
    # θ's own cost surrogate along the kept step, whichever piece was active (without inner
    # steps the line search measured it on the query batches)
    info["outer_theta_cost_change"] = (
        float((own_cost(module, new_theta, theta_batches)
               - own_cost(module, theta, theta_batches)).detach())
        if theta_batches and not own_active else result.cost_change)
    info.update(inner_step_stats(inner))
    return new_theta, info


def own_cost(module: nn.Module, params: Params, batches: Sequence[Batch]) -> Tensor:
    """Mean over tasks of the cost surrogate of ``params`` on θ's own batches."""
    return torch.stack([surrogates(module, params, batch)[1] for batch in batches]).mean()


def inner_step_stats(steps: Sequence[CPOStep]) -> dict[str, float]:
    """Case counts and mean multipliers of inner steps (empty dict when there are none)."""
    if not steps:
        return {}
    stats = {f"inner_case_{k}": float(sum(s.case == k for s in steps)) for k in CASES}
    stats["inner_lam_mean"] = float(torch.stack([s.lam.detach() for s in steps]).mean())
    stats["inner_nu_mean"] = float(torch.stack([s.nu.detach() for s in steps]).mean())
    stats["inner_recoveries"] = stats[f"inner_case_{CASE_INFEASIBLE}"]
    return stats


def adaptation_step(
    module: nn.Module, params: Params, batch: Batch, cfg: UpdateConfig
) -> tuple[Params, dict[str, float]]:
    """One test-time adaptation step on a single task's batch.

    Meta algorithms take their inner step (radius ``inner_delta``, no line search); CPO and
    TRPO take their own update (radius ``delta``, with line search), as in the paper.
    """
    if cfg.inner_steps > 0:
        new, step = inner_step(module, detached(params), batch, cfg, create_graph=False)
        return new, {"case": float(step.case), "lam": float(step.lam), "nu": float(step.nu)}
    return meta_update(module, params, [[]], [batch], cfg)
