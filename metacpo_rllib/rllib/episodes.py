"""The EnvRunner glue of the sampler: set task and weights on a SingleAgentEnvRunner, roll out
whole episodes on its sub-envs with :func:`metacpo_rllib.rollout.rollout` (whose docstring
has the conventions), log RLlib's sampling metrics, return compact EpisodeData.

The glue touches the runner in four places only: ``set_state`` (weights), the sub-envs
(``runner.env.unwrapped``: ``set_task`` and the envs stepped), the runner's module (the
policy) and its metrics logger (:func:`_log_sampled`). RLlib settings this bypasses
(connectors, ``normalize_actions``, ``explore``, episode callbacks) are rejected by
``MetaCPOConfig.validate``.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.utils.metrics import SAMPLE_TIMER

from metacpo_rllib.optim import EpisodeData
from metacpo_rllib.rollout import (  # noqa: F401  (re-exported: the sampling core)
    EVAL_SPAWN_KEY, PolicyFn, action_bounds, episode_streams, evaluation_seed,
    evaluation_summary, gaussian_logp, numpy_policy, rollout, sampling_policy, torch_policy)
from metacpo_rllib.rllib.protocol import SampleJob, SampleResult


def policy_of(module: Any) -> PolicyFn:
    """The sampling policy of an RLModule with a GaussianMLP ``pi`` (numpy when possible)."""
    return sampling_policy(module.pi)


# -- the runner side ------------------------------------------------------------------------
def _node_id() -> str:
    """This process's Ray node id; "" without Ray (asking would start a local instance)."""
    import ray

    if not ray.is_initialized():
        return ""
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # no usable Ray context
        return ""


def _action_bounds(runner: Any) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Clip bounds for the env actions (None when the config turns clipping off)."""
    if not getattr(runner.config, "clip_actions", True):
        return None, None
    return action_bounds(runner.env.single_action_space)


def _log_sampled(runner: Any, episodes: Sequence[EpisodeData], seconds: Sequence[float]
                 ) -> None:
    """Log steps / episodes and per-episode length, return and duration into the runner's
    metrics, under RLlib's own keys (``num_env_steps_sampled_lifetime``,
    ``episode_return_mean``, ...)."""
    runner._increase_sampled_metrics(sum(len(d) for d in episodes), len(episodes))
    for data, sec in zip(episodes, seconds):
        runner._log_episode_metrics(len(data), float(data.rewards.sum()), sec)


def sample_jobs(runner: Any, jobs: Sequence[SampleJob]) -> dict[str, Any]:
    """Run :class:`SampleJob` s in turn on ``runner`` (a SingleAgentEnvRunner).

    Weights are set synchronously and without a sequence number (so they are always
    applied); the task reaches every sub-env and takes effect at the reset that starts
    each episode. The episodes are spread over the runner's sub-envs (see :func:`rollout`
    and the module docstring for the conventions and the seeding). Returns ``{"results":
    [SampleResult, ...], "metrics": runner.get_metrics()}``.

    An evaluation job returns, instead of its episodes, their per-episode figures
    (``SampleResult.evaluation``); it is not counted in the runner's sampling metrics.
    """
    low, high = _action_bounds(runner)
    envs = list(runner.env.unwrapped.envs)
    results = [_run_job(runner, envs, job, low, high) for job in jobs]
    return {"results": results, "metrics": runner.get_metrics()}


def _run_job(runner: Any, envs: Sequence[Any], job: SampleJob,
             low: Optional[np.ndarray], high: Optional[np.ndarray]) -> SampleResult:
    """One job of :func:`sample_jobs`: weights and task set on the runner, then the rollout."""
    if job.weights is not None:
        runner.set_state({COMPONENT_RL_MODULE: job.weights})
    runner.env.unwrapped.call("set_task", job.task)
    start = time.perf_counter()
    if job.evaluation:
        episodes, task_ids, seconds = rollout(
            envs, policy_of(runner.module), job.num_episodes, job.seed, low, high,
            deterministic=job.deterministic)
    else:
        with runner.metrics.log_time(SAMPLE_TIMER):
            episodes, task_ids, seconds = rollout(envs, policy_of(runner.module),
                                                  job.num_episodes, job.seed, low, high)
        _log_sampled(runner, episodes, seconds)
    common = dict(job=job.job, task=job.task, mode=job.mode, episode_task_ids=task_ids,
                  num_env_steps=int(sum(len(d) for d in episodes)),
                  sample_s=time.perf_counter() - start,
                  worker_index=int(runner.worker_index), node_id=_node_id())
    if job.evaluation:
        return SampleResult(evaluation=evaluation_summary(episodes, job.seed,
                                                          job.num_episodes), **common)
    return SampleResult(episodes=episodes, **common)
