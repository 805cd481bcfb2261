"""A running mean / variance observation filter, kept as module buffers (so it travels with the
policy's state: EnvRunners, checkpoints, exported policies)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

#: Normalised observations are clipped to [-OBS_CLIP, OBS_CLIP].
OBS_CLIP = 10.0
#: Added to the variance before the square root (a constant channel stays finite).
VAR_EPS = 1e-8


class ObsFilter(nn.Module):
    """obs -> clip((obs - mean) / sqrt(var + eps), ±OBS_CLIP), per observation channel.

    The statistics are buffers: ``count`` (int64), ``mean`` and ``var`` (float32: the
    population variance of every observation seen so far; merged in float64, stored in
    float32 so that they pass RLlib's state transfers and checkpoints unchanged); the
    forward reads ``mean`` and ``scale`` = 1/sqrt(var + eps), refreshed by :meth:`update`.
    The filter starts as the identity (count 0, mean 0, scale 1; only the clip acts) and
    changes only when :meth:`update` is called: between meta-iterations, never while a
    batch is being sampled or learned from, so the log-probabilities of a batch and of its
    update agree.
    """

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("var", torch.ones(obs_dim))
        self.register_buffer("scale", torch.ones(obs_dim))

    def forward(self, obs: Tensor) -> Tensor:
        return torch.clamp((obs - self.mean) * self.scale, -OBS_CLIP, OBS_CLIP)

    @torch.no_grad()
    def update(self, obs: Tensor | np.ndarray) -> None:
        """Merge a batch of observations ``[N, obs_dim]`` into the statistics (Chan et al.'s
        parallel update) and refresh the scale."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float64).reshape(-1, self.mean.numel())
        n, seen = x.shape[0], int(self.count)
        if n == 0:
            return
        mean, var = self.mean.double(), self.var.double()
        total = seen + n
        delta = x.mean(0) - mean
        m2 = var * seen + x.var(0, unbiased=False) * n + delta.pow(2) * seen * n / total
        self.mean.copy_(mean + delta * n / total)
        self.var.copy_(m2 / total)
        self.count.fill_(total)
        self.scale.copy_(torch.rsqrt(self.var.double() + VAR_EPS))


def numpy_filter(obs_filter: ObsFilter) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy copy of ``obs_filter``'s forward (float32; the statistics are copied now)."""
    mean = obs_filter.mean.detach().cpu().numpy().astype(np.float32)
    scale = obs_filter.scale.detach().cpu().numpy().astype(np.float32)

    def normalise(obs: np.ndarray) -> np.ndarray:
        return np.clip((obs - mean) * scale, -OBS_CLIP, OBS_CLIP)

    return normalise
