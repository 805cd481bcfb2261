"""The default RLModule: optim's GaussianMLP wrapped as a TorchRLModule (diagonal Gaussian actions)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.rl_module.torch import TorchRLModule

from metacpo_rllib.optim import GaussianMLP, Params

#: Name of the GaussianMLP attribute inside the RLModule (prefix of its state-dict keys).
POLICY_ATTR = "pi"
DEFAULT_HIDDEN = (32, 16)
DEFAULT_INIT_LOG_STD = -0.5


class GaussianMLPModule(TorchRLModule):
    """obs -> ACTION_DIST_INPUTS = concat(mean, log_std) of ``self.pi`` (a GaussianMLP).

    ``model_config`` keys: ``policy_hidden`` (default (32, 16)), ``init_log_std`` and
    ``obs_filter`` (default False: a running observation filter inside ``self.pi``, whose
    statistics are buffers of the module state, so EnvRunners, checkpoints and exported
    policies normalise alike).
    The same module serves sampling (EnvRunners) and the update (Learner): the Learner
    hands ``self.pi`` to the optim functions, the EnvRunners sample from its outputs.
    """

    def setup(self) -> None:
        cfg = self.model_config or {}
        hidden = tuple(cfg.get("policy_hidden", DEFAULT_HIDDEN))
        init_log_std = float(cfg.get("init_log_std", DEFAULT_INIT_LOG_STD))
        obs_dim = int(np.prod(self.observation_space.shape))
        act_dim = int(np.prod(self.action_space.shape))
        self.pi = GaussianMLP(obs_dim, act_dim, hidden=hidden, init_log_std=init_log_std,
                              obs_filter=bool(cfg.get("obs_filter", False)))
        self.action_dist_cls = TorchDiagGaussian

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS].float().reshape(batch[Columns.OBS].shape[0], -1)
        mean, log_std = self.pi(obs)
        return {Columns.ACTION_DIST_INPUTS: torch.cat([mean, log_std], dim=-1)}


def params_to_weights(params: Params, policy: Optional[torch.nn.Module] = None
                      ) -> dict[str, np.ndarray]:
    """Policy parameters (optim names) -> an RLModule state dict for ``set_state``; with
    ``policy`` (the GaussianMLP the parameters belong to) its buffers too (the observation
    filter's statistics), so a module that loads the dict samples as ``policy`` would."""
    buffers = {} if policy is None else dict(policy.named_buffers())
    return {f"{POLICY_ATTR}.{k}": v.detach().cpu().numpy().copy()
            for k, v in {**buffers, **params}.items()}


def weights_to_params(weights: dict[str, Any]) -> Params:
    """Inverse of :func:`params_to_weights` (tensors, no grad)."""
    prefix = POLICY_ATTR + "."
    return {k[len(prefix):]: torch.as_tensor(np.asarray(v)) for k, v in weights.items()
            if k.startswith(prefix)}
