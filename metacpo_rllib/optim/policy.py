"""The Gaussian MLP policy and functional helpers (parameters as name -> tensor dicts)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metacpo_rllib.optim.obs_filter import ObsFilter

Params = dict[str, Tensor]

LOG_2PI = math.log(2.0 * math.pi)


def tanh_body(in_dim: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    """Linear + tanh layers of the given widths, and the width of their output."""
    layers: list[nn.Module] = []
    width = int(in_dim)
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.Tanh()]
        width = int(size)
    return nn.Sequential(*layers), width


class GaussianMLP(nn.Module):
    """obs -> (mean, log_std): a tanh MLP for the mean and a state-independent log-std.

    ``obs_filter``: observations pass through a running mean / variance filter
    (``self.obs_filter``, an :class:`ObsFilter` whose statistics are buffers, not
    parameters: the update never differentiates through them) before the MLP; without it
    ``self.obs_filter`` is None and the observations go to the MLP unchanged.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (32, 16),
        init_log_std: float = -0.5,
        obs_filter: bool = False,
    ) -> None:
        super().__init__()
        self.obs_filter = ObsFilter(obs_dim) if obs_filter else None
        self.body, width = tanh_body(obs_dim, hidden)
        self.mean = nn.Linear(width, act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        # Small final layer: the initial policy is close to N(0, exp(init_log_std)).
        nn.init.orthogonal_(self.mean.weight, gain=0.01)
        nn.init.zeros_(self.mean.bias)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        if self.obs_filter is not None:
            obs = self.obs_filter(obs)
        mean = self.mean(self.body(obs))
        return mean, self.log_std.expand_as(mean)


def params_of(module: nn.Module) -> Params:
    """The module's parameters as a name -> tensor dict (the live tensors, not copies)."""
    return dict(module.named_parameters())


def detached(params: Params) -> Params:
    """Copies of ``params`` cut from any graph, requiring grad (new leaves)."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def forward(module: nn.Module, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
    """The policy's (mean, log_std) at ``params`` (functional; differentiable w.r.t. params)."""
    return functional_call(module, params, (obs,))


def log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of a diagonal Gaussian, summed over action dimensions -> shape [N]."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def kl_gaussian(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians per row, summed over action dimensions -> [N]."""
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mean_term = (mean_p - mean_q).pow(2) * torch.exp(-2.0 * log_std_q)
    return 0.5 * (var_ratio + mean_term - 1.0).sum(-1) + (log_std_q - log_std_p).sum(-1)


def flatten(tensors: Params | Sequence[Tensor]) -> Tensor:
    """Concatenate tensors (a dict in its order, or a sequence) into one flat vector."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1) for t in values])


def unflatten(vector: Tensor, like: Params) -> Params:
    """Split a flat vector into tensors shaped like ``like`` (same key order)."""
    out, start = {}, 0
    for name, ref in like.items():
        out[name] = vector[start:start + ref.numel()].view_as(ref)
        start += ref.numel()
    if start != vector.numel():
        raise ValueError(f"vector: {vector.numel()} entries for {start} parameters")
    return out


def add_step(params: Params, step: Tensor, scale: float | Tensor = 1.0) -> Params:
    """params + scale * step, with ``step`` a flat vector (keeps the graph of both)."""
    return {k: p + scale * s for (k, p), s in zip(params.items(), unflatten(step, params).values())}
