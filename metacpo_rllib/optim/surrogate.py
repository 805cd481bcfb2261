"""Importance-weighted reward/cost surrogates, mean KL and Fisher-vector products of the policy."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import vmap

from metacpo_rllib.optim.batch import Batch
from metacpo_rllib.optim.linalg import MetricProduct
from metacpo_rllib.optim.policy import Params, forward, kl_gaussian, log_prob


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


def fisher_product(
    module: nn.Module,
    params: Sequence[Params],
    obs: Sequence[Tensor],
    create_graph: bool = False,
) -> MetricProduct:
    """Block product ``V -> [F_1 V[:, 0], ..., F_B V[:, B-1]]`` for an (n, B) block ``V``.

    ``F_j`` is the Fisher matrix of the Gaussian policy at ``params[j]`` on the states
    ``obs[j]`` (items may differ in parameters and in their number of states): the exact
    Gauss-Newton form of the KL Hessian of a diagonal Gaussian,
    F = mean_s[J_mu^T diag(exp(-2 log_std)) J_mu] + 2 I on the log-std entries (the cross
    terms vanish). All items share one vmapped forward graph, so a product for B columns
    costs about what one column's does while the network is small. J_mu v comes from the
    double-vjp trick (plain reverse-mode autograd); with ``create_graph`` the product is
    differentiable w.r.t. every ``params[j]`` (needed when differentiating through an inner
    step); its ``without_graph`` twin never builds one.
    """
    names = list(params[0])
    size = len(params)
    stacked = {k: torch.stack([p[k] for p in params]) for k in names}
    tensors = [stacked[k] for k in names]
    lengths = [int(o.shape[0]) for o in obs]
    longest = max(lengths)
    # states padded to a common length; padding rows weigh 0, real rows 1/len
    states = torch.stack([torch.nn.functional.pad(o, (0, 0, 0, longest - len_))
                          for o, len_ in zip(obs, lengths)])
    steps = torch.arange(longest, device=states.device)
    weight = torch.stack([(steps < len_).to(states.dtype) / len_
                          for len_ in lengths]).unsqueeze(-1)
    mean, log_std = vmap(lambda p, o: forward(module, p, o))(stacked, states)
    scale = torch.exp(-2.0 * log_std) * weight
    # dummy cotangent: J^T w is linear in w; d/dw (J^T w . v) = J v
    w = torch.zeros_like(mean, requires_grad=True)
    jt_w = torch.autograd.grad(mean, tensors, w, create_graph=True, allow_unused=True)
    log_std_mask = torch.cat([torch.full((t[0].numel(),), float(k.endswith("log_std")),
                                         dtype=t.dtype) for k, t in stacked.items()])

    def per_item(block: Tensor) -> list[Tensor]:
        """(n, B) -> one (B, *shape) tensor per parameter."""
        rows = block.t()
        out, start = [], 0
        for t in tensors:
            width = t[0].numel()
            out.append(rows[:, start:start + width].reshape(t.shape))
            start += width
        return out

    def product(block: Tensor, graph: bool) -> Tensor:
        if block.shape != (log_std_mask.numel(), size):
            raise ValueError(f"block: expected shape {(log_std_mask.numel(), size)}, "
                             f"got {tuple(block.shape)}")
        inner = sum((j * v).sum() for j, v in zip(jt_w, per_item(block)) if j is not None)
        j_v = torch.autograd.grad(inner, w, retain_graph=True, create_graph=graph)[0]
        out = torch.autograd.grad(mean, tensors, scale * j_v, retain_graph=True,
                                  create_graph=graph, allow_unused=True)
        rows = torch.cat([(torch.zeros_like(t) if o is None else o).reshape(size, -1)
                          for o, t in zip(out, tensors)], dim=1)
        return rows.t() + 2.0 * log_std_mask.unsqueeze(1) * block

    return MetricProduct(lambda block: product(block, create_graph),
                         lambda block: product(block.detach(), False))


def fisher_vector_product(
    module: nn.Module, params: Params, obs: Tensor, create_graph: bool = False
) -> MetricProduct:
    """v -> F v for one vector: :func:`fisher_product` with a single item."""
    block = fisher_product(module, [params], [obs], create_graph)
    return MetricProduct(lambda v: block(v.unsqueeze(1)).squeeze(1),
                         lambda v: block.without_graph(v.unsqueeze(1)).squeeze(1))
