"""The one update of all four algorithms: K inner CPO steps per task, then an outer CPO step.

``meta_update`` with ``inner_steps = K > 0`` is Meta-CPO (Meta-TRPO with
``constrained=False``); with K = 0 it is a plain CPO (TRPO) update on the given batches.
Inner steps are differentiated exactly (second order, full Jacobian) unless ``first_order``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from metacpo_rllib.optim.batch import Batch
from metacpo_rllib.optim.cpo import CPOStep, cpo_step
from metacpo_rllib.optim.line_search import LineSearchResult, line_search
from metacpo_rllib.optim.policy import Params, add_step, detached, flatten
from metacpo_rllib.optim.surrogate import fisher_vector_product, mean_kl, surrogates

METRICS = ("fisher", "euclidean")
BACKENDS = ("closed_form", "cvxpylayers_dual", "cvxpylayers_primal")


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

    def validate(self) -> "UpdateConfig":
        """Raise ValueError naming the first invalid field."""
        def bad(field: str, why: str) -> None:
            raise ValueError(f"{field}: {why}, got {getattr(self, field)!r}")

        if not isinstance(self.inner_steps, int) or isinstance(self.inner_steps, bool) \
                or self.inner_steps < 0:
            bad("inner_steps", "expected an integer >= 0")
        for field in ("constrained", "first_order"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "expected a bool")
        for field in ("delta", "inner_delta"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                bad(field, "expected a finite number > 0")
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
        return self


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
    metric_solution: Tensor | None = None,
) -> CPOStep:
    """cpo_step in the configured metric: the Fisher at ``params`` on every
    ``cfg.fisher_stride``-th state of ``metric_obs`` (consecutive states of an episode carry
    nearly the same information, and each Fisher product costs time linear in the states)."""
    hvp = None
    if cfg.metric == "fisher":
        hvp = fisher_vector_product(module, params, metric_obs[::cfg.fisher_stride],
                                    create_graph=create_graph)
    return cpo_step(g, b, c, delta, hvp=hvp, backend=cfg.backend, cg_iters=cfg.cg_iters,
                    cg_damping=cfg.cg_damping, cg_tol=cfg.cg_tol,
                    metric_solution=metric_solution)


def inner_step(
    module: nn.Module, params: Params, batch: Batch, cfg: UpdateConfig, create_graph: bool
) -> tuple[Params, CPOStep]:
    """One adaptation step φ' = φ + x*(g(φ), b(φ), c) on ``batch`` (radius ``inner_delta``).

    With ``create_graph`` the step stays differentiable w.r.t. ``params`` (and what they
    were computed from); otherwise the returned parameters are new leaves.
    The Fisher solve is kept on the batch (``batch.step_memo``): the same step taken again
    at the same parameter values (the meta-gradient replaying the learner's inner step)
    skips its conjugate gradient.
    """
    tensors = list(params.values())
    reward, cost = surrogates(module, params, batch)
    g = flatten(torch.autograd.grad(reward, tensors, create_graph=create_graph,
                                    retain_graph=True))
    b = None
    if cfg.constrained:
        b = flatten(torch.autograd.grad(cost, tensors, create_graph=create_graph))
    known = None
    if cfg.metric == "fisher":  # only the Fisher metric has a solve to keep
        settings = (cfg.constrained, cfg.cg_iters, cfg.cg_damping, cfg.cg_tol,
                    cfg.fisher_stride)
        values = flatten(params).detach()
        memo = batch.step_memo
        if memo and memo[0] == settings and torch.equal(memo[1], values):
            known = memo[2]
    step = constrained_step(module, params, g, b, batch.constraint_value, cfg.inner_delta,
                            batch.obs, cfg, create_graph, metric_solution=known)
    if cfg.metric == "fisher":
        batch.step_memo = (settings, values, step.metric_solution)
    if create_graph:
        return add_step(params, step.x), step
    return detached(add_step(params, step.x.detach())), step


def adapt(
    module: nn.Module,
    params: Params,
    batches: Sequence[Batch],
    cfg: UpdateConfig,
    create_graph: bool = False,
) -> tuple[Params, list[CPOStep]]:
    """Apply one inner step per batch in order (batch k sampled by the k-th adapted policy).

    With ``first_order`` the steps are added as constants: gradients pass straight
    through to ``params`` (first-order MAML).
    """
    steps = []
    phi = params
    for batch in batches:
        new, step = inner_step(module, phi, batch, cfg,
                               create_graph=create_graph and not cfg.first_order)
        if create_graph and cfg.first_order:
            new = add_step(phi, step.x.detach())
        phi = new
        steps.append(step)
    return phi, steps


def query_objectives(
    module: nn.Module,
    params: Params,
    support: Sequence[Sequence[Batch]],
    query: Sequence[Batch],
    cfg: UpdateConfig,
    create_graph: bool,
) -> tuple[Tensor, Tensor, list[CPOStep]]:
    """Meta-objective and meta-constraint surrogate: the mean over tasks of the reward and
    cost surrogates of the adapted parameters φ_i^K(params) on the query batches."""
    rewards, costs, steps = [], [], []
    for task_support, task_query in zip(support, query):
        phi, task_steps = adapt(module, params, task_support, cfg, create_graph=create_graph)
        reward, cost = surrogates(module, phi, task_query)
        rewards.append(reward)
        costs.append(cost)
        steps += task_steps
    return torch.stack(rewards).mean(), torch.stack(costs).mean(), steps


def meta_gradients(
    module: nn.Module,
    theta: Params,
    support: Sequence[Sequence[Batch]],
    query: Sequence[Batch],
    cfg: UpdateConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, list[CPOStep]]:
    """Meta-objective and meta-constraint surrogates at ``theta`` (leaves requiring grad)
    and their exact gradients g, b w.r.t. theta: one reverse pass each through all K inner
    steps of every task (b is None when unconstrained)."""
    tensors = list(theta.values())
    reward, cost, inner = query_objectives(module, theta, support, query, cfg, create_graph=True)
    g = flatten(torch.autograd.grad(reward, tensors, retain_graph=cfg.constrained))
    b = flatten(torch.autograd.grad(cost, tensors)) if cfg.constrained else None
    return reward.detach(), cost.detach(), g, b, inner


def meta_update(
    module: nn.Module,
    params: Params,
    support: Sequence[Sequence[Batch]],
    query: Sequence[Batch],
    cfg: UpdateConfig,
) -> tuple[Params, dict[str, float]]:
    """One outer constrained trust-region step on θ = ``params``.

    ``support[i]`` holds task i's K batches (batch k sampled by φ_i^k, φ_i^0 = θ) and
    ``query[i]`` its batch sampled by φ_i^K. The outer constraint value is
    c = mean_i(J_C,i(φ_i^K) − h_i) from the query batches. The line search re-runs the inner
    adaptation at each candidate θ. Returns the new θ (detached leaves) and statistics.
    """
    if len(support) != len(query) or not query:
        raise ValueError("support/query: need one support list per query batch (>= 1 task)")
    if any(len(s) != cfg.inner_steps for s in support):
        raise ValueError(f"support: each task needs inner_steps={cfg.inner_steps} batches")
    theta = detached(params)
    reward, cost, g, b, inner = meta_gradients(module, theta, support, query, cfg)
    c = float(sum(q.constraint_value for q in query) / len(query))
    # The outer trust region is measured on the states θ itself visited.
    metric_obs = torch.cat([s[0].obs if s else q.obs for s, q in zip(support, query)])
    step = constrained_step(module, theta, g, b, c, cfg.delta, metric_obs, cfg,
                            create_graph=False)

    def evaluate(candidate: Params) -> tuple[float, float, float]:
        new_reward, new_cost, _ = query_objectives(module, candidate, support, query, cfg,
                                                   create_graph=False)
        if cfg.metric == "fisher":
            kl = float(mean_kl(module, theta, candidate, metric_obs).detach())
        else:
            kl = 0.5 * float(flatten(candidate).sub(flatten(theta)).pow(2).sum())
        return (float(new_reward.detach()) - float(reward), float(new_cost.detach()) - float(cost),
                kl)

    result: LineSearchResult = line_search(
        lambda frac: detached(add_step(theta, step.x.detach(), frac)),
        evaluate,
        delta=cfg.delta,
        constraint_value=c if cfg.constrained else None,
        require_improvement=step.case != 0,
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
        "outer_constraint_value": c,
        "line_search_steps": float(result.steps_tried),
        "line_search_accepted": float(result.accepted),
    }
    info.update(inner_step_stats(inner))
    return new_theta, info


def inner_step_stats(steps: Sequence[CPOStep]) -> dict[str, float]:
    """Case counts and mean multipliers of inner steps (empty dict when there are none)."""
    if not steps:
        return {}
    stats = {f"inner_case_{k}": float(sum(s.case == k for s in steps)) for k in range(5)}
    stats["inner_lam_mean"] = float(torch.stack([s.lam.detach() for s in steps]).mean())
    stats["inner_nu_mean"] = float(torch.stack([s.nu.detach() for s in steps]).mean())
    stats["inner_recoveries"] = stats["inner_case_0"]
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
