"""Importance-weighted reward/cost surrogates, mean KL and Fisher-vector products of the policy."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from metacpo_rllib.optim.batch import Batch
from metacpo_rllib.optim.policy import Params, flatten, forward, kl_gaussian, log_prob, unflatten


def surrogates(module: nn.Module, params: Params, batch: Batch) -> tuple[Tensor, Tensor]:
    """(reward surrogate, cost surrogate) of ``params`` on ``batch``.

    Both weight the batch's advantages by the ratio pi_params / pi_sampling, so at the
    sampling policy their values are constant but their gradients are the policy gradients
    (the "LVC" form: the gradients depend on ``params`` and, through them, on anything the
    parameters were computed from). Reward: mean over steps (advantages normalised). Cost:
    sum over steps / number of episodes, i.e. the predicted change of the mean episode cost.
    """
    mean, log_std = forward(module, params, batch.obs)
    ratio = torch.exp(log_prob(mean, log_std, batch.actions) - batch.logp)
    reward = (ratio * batch.adv_reward).mean()
    cost = (ratio * batch.adv_cost).sum() / batch.num_episodes
    return reward, cost


def mean_kl(module: nn.Module, old: Params, new: Params, obs: Tensor) -> Tensor:
    """Mean over ``obs`` of KL(pi_old || pi_new); ``old`` is treated as constant."""
    with torch.no_grad():
        mean_o, log_std_o = forward(module, old, obs)
    mean_n, log_std_n = forward(module, new, obs)
    return kl_gaussian(mean_o, log_std_o, mean_n, log_std_n).mean()


def fisher_vector_product(
    module: nn.Module, params: Params, obs: Tensor, create_graph: bool = False
) -> Callable[[Tensor], Tensor]:
    """v -> F v, with F the Fisher matrix of the Gaussian policy at ``params`` on ``obs``.

    Uses the exact Gauss-Newton form of the KL Hessian of a diagonal Gaussian:
    F = mean_s[J_mu^T diag(exp(-2 log_std)) J_mu] + 2 I on the log-std entries (the cross
    terms vanish). J_mu v is obtained by the double-vjp trick, so everything is plain
    reverse-mode autograd; with ``create_graph`` the product is differentiable w.r.t.
    ``params`` (needed when differentiating through an inner step).
    """
    names = list(params)
    tensors = [params[k] for k in names]
    mean, log_std = forward(module, params, obs)
    n = obs.shape[0]
    precision = torch.exp(-2.0 * log_std)
    # dummy cotangent: J^T w is linear in w; d/dw (J^T w . v) = J v
    w = torch.zeros_like(mean, requires_grad=True)
    jt_w = torch.autograd.grad(mean, tensors, w, create_graph=True, allow_unused=True)
    jt_w = [torch.zeros_like(t) if j is None else j for j, t in zip(jt_w, tensors)]
    log_std_mask = flatten({k: torch.full_like(params[k], float(k.endswith("log_std")))
                            for k in names})

    def product(v: Tensor, graph: bool) -> Tensor:
        vs = unflatten(v, params)
        inner = sum((j * vs[k]).sum() for j, k in zip(jt_w, names))
        j_v = torch.autograd.grad(inner, w, retain_graph=True, create_graph=graph)[0]
        out = torch.autograd.grad(mean, tensors, precision * j_v / n,
                                  retain_graph=True, create_graph=graph, allow_unused=True)
        out = flatten([torch.zeros_like(t) if o is None else o for o, t in zip(out, tensors)])
        return out + 2.0 * log_std_mask * v

    def fvp(v: Tensor) -> Tensor:
        return product(v, create_graph)

    # The same product without a graph, for solves whose value alone is needed.
    fvp.without_graph = lambda v: product(v.detach(), False)  # type: ignore[attr-defined]
    return fvp
