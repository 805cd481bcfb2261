"""Learned reward and cost critics (value MLPs) for GAE, as an alternative to the per-batch
linear feature baseline of ``optim.advantages``.

Units. A critic's input is :func:`critic_features` of a step: the observation as the env
gives it, the step's index in its episode divided by ``max_len`` (dimensionless), and,
optionally, the task's privileged vector (:func:`privileged_vector`: layout parameters in
the family's units and the cost limit in episode-cost units). Its output V is in units of
the signal it was fitted to: the discounted reward-to-go (reward units) or the discounted
cost-to-go (episode-cost units; with ``cost_gamma = 1`` the expected remaining cost of the
episode). Episode ends are terminal (nothing is bootstrapped past an episode's last step),
as for the linear baseline: the return and the constraint are defined per episode.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from metacpo_rllib.optim.policy import tanh_body

#: Hidden layer sizes of a critic (OmniSafe's CPO uses [64, 64]).
DEFAULT_CRITIC_HIDDEN = (64, 64)
#: The time feature is the step index divided by this (the linear baseline's scale).
DEFAULT_MAX_LEN = 1000.0
#: Minibatch size and seed of the minibatch order of :func:`fit_critic`.
DEFAULT_MINIBATCH = 128
DEFAULT_FIT_SEED = 0
#: Weight of the newest fit's mean square target in the running target scale.
SCALE_MOMENTUM = 0.3


class ValueMLP(nn.Module):
    """features -> V (tanh MLP). The net regresses targets / ``scale``; ``forward`` returns
    V in the targets' units (net output × scale). ``scale`` is the root of a running mean
    of the squared targets (:meth:`update_scale`), kept as a buffer (so it is part of the
    module's state and its checkpoints)."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = DEFAULT_CRITIC_HIDDEN) -> None:
        super().__init__()
        self.body, width = tanh_body(in_dim, hidden)
        self.out = nn.Linear(width, 1)
        self.register_buffer("scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("mean_square", torch.zeros((), dtype=torch.float32))
        self.register_buffer("fits", torch.zeros((), dtype=torch.float32))

    @property
    def in_dim(self) -> int:
        first = self.body[0] if len(self.body) else self.out
        return int(first.in_features)

    def normalised(self, features: Tensor) -> Tensor:
        """The net's output (V / scale), shape [N]."""
        return self.out(self.body(features)).squeeze(-1)

    def forward(self, features: Tensor) -> Tensor:
        """V in the targets' units, shape [N]."""
        return self.normalised(features) * self.scale

    @torch.no_grad()
    def update_scale(self, targets: Tensor) -> None:
        """Fold ``targets``' mean square into the running scale (the first fit sets it);
        the last layer is rescaled so that V is unchanged by the new scale. All-zero
        targets (e.g. no cost seen yet) leave a scale of 1."""
        square = float(targets.double().pow(2).mean())
        weight = 1.0 if float(self.fits) == 0 else SCALE_MOMENTUM
        self.mean_square.copy_((1 - weight) * self.mean_square + weight * square)
        self.fits += 1
        new = math.sqrt(float(self.mean_square))
        new = new if new > 1e-8 else 1.0
        ratio = float(self.scale) / new
        self.out.weight.mul_(ratio)
        self.out.bias.mul_(ratio)
        self.scale.fill_(new)


def critic_features(obs: Any, privileged: Optional[Any] = None,
                    max_len: float = DEFAULT_MAX_LEN, time: Optional[Any] = None) -> Tensor:
    """Critic inputs of T steps, float32 [T, obs_dim + 1 (+ P)]: the observations, the time
    feature (``time``, one value per step, or by default one episode's t / ``max_len`` for
    t = 0..T-1, the step's index in the episode) and, when given, the task's privileged
    vector ([P], repeated on every step, or one row per step [T, P])."""
    obs_t = torch.as_tensor(obs, dtype=torch.float32)
    obs_t = obs_t.reshape(obs_t.shape[0], -1)
    steps = obs_t.shape[0]
    t = (torch.arange(steps, dtype=torch.float32) / float(max_len) if time is None
         else torch.as_tensor(time, dtype=torch.float32).reshape(steps))
    parts = [obs_t, t[:, None]]
    if privileged is not None:
        vec = torch.as_tensor(privileged, dtype=torch.float32)
        parts.append(vec.reshape(-1, vec.shape[-1]).expand(steps, -1))
    return torch.cat(parts, dim=1)


def privileged_vector(params: Mapping[str, Any], cost_limit: float) -> np.ndarray:
    """A task's privileged critic input (float32): its numeric layout parameters in sorted
    key order (sequences of numbers flattened, other values skipped), then its cost limit."""
    values: list[float] = []
    for key in sorted(params):
        flat = np.asarray(params[key]).ravel()
        if flat.size and np.issubdtype(flat.dtype, np.number) \
                and not np.issubdtype(flat.dtype, np.bool_):
            values.extend(float(v) for v in flat)
    values.append(float(cost_limit))
    return np.asarray(values, dtype=np.float32)


def fit_critic(net: ValueMLP, features: Tensor, targets: Tensor, epochs: int = 10,
               lr: float = 1e-3, minibatch: int = DEFAULT_MINIBATCH,
               seed: int = DEFAULT_FIT_SEED) -> float:
    """Fit ``net`` to ``targets`` (discounted signal-to-go, [N], in signal units) at
    ``features`` ([N, in_dim]) with Adam on the mean squared error of targets / scale, for
    ``epochs`` passes in minibatches (their order from a torch Generator seeded with
    ``seed``: reproducible). The running scale is updated first (:meth:`ValueMLP.
    update_scale`). Returns the final loss: the mean squared error over the last epoch, in
    units of scale² (dimensionless; 1 is the error of predicting 0 for targets of rms 1)."""
    features = torch.as_tensor(features, dtype=torch.float32)
    targets = torch.as_tensor(targets, dtype=torch.float32).reshape(-1)
    if features.shape[0] != targets.shape[0] or features.shape[0] == 0:
        raise ValueError(f"features, targets: expected the same number (> 0) of rows, got "
                         f"{features.shape[0]} and {targets.shape[0]}")
    net.update_scale(targets)
    goal = targets / net.scale
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(int(seed))
    total = features.shape[0]
    loss_sum = 0.0
    threads = torch.get_num_threads()
    # minibatches this small run fastest on one thread (several threads spin and wait,
    # badly so on a busy machine); the caller's setting is restored
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            for _ in range(int(epochs)):
                loss_sum = 0.0
                for idx in torch.randperm(total, generator=generator).split(int(minibatch)):
                    loss = (net.normalised(features[idx]) - goal[idx]).pow(2).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * len(idx)
    finally:
        torch.set_num_threads(threads)
    return loss_sum / total


def episode_values(net: ValueMLP, features: Sequence[Tensor]) -> list[np.ndarray]:
    """Per episode, the critic's V at each step (float64, signal units; no grad)."""
    with torch.no_grad():
        return [net(f).double().numpy() for f in features]
