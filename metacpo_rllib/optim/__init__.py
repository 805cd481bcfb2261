"""The math of Meta-CPO in pure torch (no Ray, no gymnasium): CPO step, DCO layers, meta-update."""
from metacpo_rllib.optim.batch import Batch, BadBatchError, EpisodeData, make_batch
from metacpo_rllib.optim.cpo import CPOStep, NonFiniteError, cpo_step
from metacpo_rllib.optim.linalg import conjugate_gradient
from metacpo_rllib.optim.meta import (
    BACKENDS,
    METRICS,
    UpdateConfig,
    adapt,
    adapt_tasks,
    adaptation_step,
    inner_step,
    inner_steps,
    meta_update,
)
from metacpo_rllib.optim.policy import GaussianMLP, Params, params_of

__all__ = [
    "BACKENDS", "METRICS", "Batch", "BadBatchError", "CPOStep", "EpisodeData", "GaussianMLP",
    "NonFiniteError", "Params", "UpdateConfig", "adapt", "adapt_tasks", "adaptation_step",
    "conjugate_gradient", "cpo_step", "inner_step", "inner_steps", "make_batch", "meta_update",
    "params_of",
]
