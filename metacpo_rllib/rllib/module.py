"""The default RLModule: optim's GaussianMLP wrapped as a TorchRLModule (diagonal Gaussian actions)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from metacpo_rllib.optim import GaussianMLP, Params
from metacpo_rllib.optim.critics import DEFAULT_CRITIC_HIDDEN, ValueMLP, critic_features

#: Name of the GaussianMLP attribute inside the RLModule (prefix of its state-dict keys).
POLICY_ATTR = "pi"
DEFAULT_HIDDEN = (32, 16)
DEFAULT_INIT_LOG_STD = -0.5
#: The critics' attributes (Learner-only; their state-dict keys start with these).
CRITIC_ATTRS = ("vf_reward", "vf_cost")
#: Optional batch keys of ``compute_values``: each step's time feature t / max_len ([B])
#: and the task's privileged vector ([B, P] or [P]); zeros where absent.
CRITIC_TIME = "critic_time"
CRITIC_PRIVILEGED = "critic_privileged"


class GaussianMLPModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """obs -> ACTION_DIST_INPUTS = concat(mean, log_std) of ``self.pi`` (a GaussianMLP).

    ``model_config`` keys: ``policy_hidden`` (default (32, 16)), ``init_log_std`` and
    ``obs_filter`` (default False: a running observation filter inside ``self.pi``, whose
    statistics are buffers of the module state, so EnvRunners, checkpoints and exported
    policies normalise alike).
    The same module serves sampling (EnvRunners) and the update (Learner): the Learner
    hands ``self.pi`` to the optim functions, the EnvRunners sample from its outputs.

    Critics: with ``model_config["critics"]`` (default False) the module also holds a
    reward and a cost critic, ``self.vf_reward`` and ``self.vf_cost``
    (``optim.critics.ValueMLP`` on ``critic_features``: obs, time and
    ``critic_privileged_dim`` privileged inputs; hidden sizes ``critic_hidden``), built
    only when the module is not inference-only (the Learner's, not the EnvRunners').
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
        self.privileged_dim = int(cfg.get("critic_privileged_dim", 0))
        if cfg.get("critics", False) and not self.inference_only:
            critic_hidden = tuple(cfg.get("critic_hidden", DEFAULT_CRITIC_HIDDEN))
            in_dim = obs_dim + 1 + self.privileged_dim
            self.vf_reward = ValueMLP(in_dim, critic_hidden)
            self.vf_cost = ValueMLP(in_dim, critic_hidden)

    def get_non_inference_attributes(self) -> list[str]:
        """The critics: left out of the EnvRunners' modules and of the weights sent to them."""
        return [a for a in CRITIC_ATTRS if hasattr(self, a)]

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """The reward critic's V (reward units), shape (B,), at ``batch[Columns.OBS]`` (raw
        observations: passed through the policy's observation filter, if it has one, as
        the Learner does); the time feature comes from ``batch[CRITIC_TIME]`` and the
        privileged inputs from ``batch[CRITIC_PRIVILEGED]``, zeros where a key is absent."""
        if not hasattr(self, "vf_reward"):
            raise ValueError("critics: this module has no critics (model_config critics is "
                             "off, or the module is inference-only)")
        obs = batch[Columns.OBS].float().reshape(batch[Columns.OBS].shape[0], -1)
        if self.pi.obs_filter is not None:
            obs = self.pi.obs_filter(obs)
        time = batch.get(CRITIC_TIME)
        privileged = None
        if self.privileged_dim:
            privileged = batch.get(CRITIC_PRIVILEGED, torch.zeros(self.privileged_dim))
        return self.vf_reward(critic_features(
            obs, privileged, time=torch.zeros(obs.shape[0]) if time is None else time))

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
    """Inverse of :func:`params_to_weights` (tensors, no grad): the policy's parameters and,
    when the weights carry them, its buffers (``obs_filter.*``)."""
    prefix = POLICY_ATTR + "."
    return {k[len(prefix):]: torch.as_tensor(np.asarray(v)) for k, v in weights.items()
            if k.startswith(prefix)}
