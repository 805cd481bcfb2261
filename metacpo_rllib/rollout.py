"""Whole-episode rollouts of a Gaussian policy on gymnasium task envs, without Ray: the one
sampler of the project, used by the EnvRunners (``rllib.episodes.sample_jobs``), by
``metacpo eval``, by the benchmarks, the research scripts and the tests
(:func:`sample_episodes` for one env and a policy at given parameters).

The rollout bypasses ``SingleAgentEnvRunner.sample()`` (its connector pipelines and per-step
bookkeeping cost about as much as the simulator); it steps the runner's sub-envs directly
with one batched policy forward per step. Conventions (the same as RLlib's sampling with
``normalize_actions=False, clip_actions=True``):

* obs are cast to float32 for the policy and stored as float32; ``obs[t]`` is where
  action t was taken (the final observation is dropped);
* actions are ``mean + exp(log_std) * noise`` in float32 and are stored *unclipped*;
  ``logp`` is their log-density under the policy (``optim.policy.log_prob``); only the
  copy sent to ``env.step`` is clipped to the action space;
* ``costs[t]`` is ``info["cost"]`` of step t; rewards and costs are float64; the task
  ids of an episode are the ``info["task_id"]`` values of its steps (not of the reset);
* a job's ``seed`` gives every episode its own reset seed and noise generator (children of
  ``numpy.random.SeedSequence(seed)``): the episodes do not depend on how they are spread
  over the sub-envs, and the process's global numpy / torch RNGs are not used;
* learning and evaluation episodes never share a seed: learning reset seeds lie in
  [0, 2³¹), evaluation reset seeds in [2³¹, 2³²) (safety-gymnasium takes 32-bit seeds), and
  evaluation noise comes from a seed sequence with its own spawn key
  (:data:`EVAL_SPAWN_KEY`, see :func:`evaluation_seed`); an evaluation job samples only
  summaries (``rllib.episodes.sample_jobs``, a ``SampleJob`` of mode ``"eval"``) and is not
  counted in the runner's sampling metrics.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from metacpo_rllib.optim import EpisodeData
from metacpo_rllib.optim.obs_filter import numpy_filter
from metacpo_rllib.optim.policy import Params

#: obs batch [B, obs_dim] float32 -> (mean [B, act_dim], log_std [B, act_dim]) float32.
PolicyFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


# -- the policy -----------------------------------------------------------------------------
def numpy_policy(pi: torch.nn.Module) -> Optional[PolicyFn]:
    """A numpy copy of a GaussianMLP (an optional ``obs_filter``, ``body`` of Linear / Tanh
    layers, ``mean`` Linear, state-independent ``log_std``), or None when ``pi`` has another
    structure.

    The weights are copied now: later changes to ``pi`` are not seen.
    """
    layers: list[tuple[np.ndarray, np.ndarray] | None] = []  # None: tanh
    for layer in getattr(pi, "body", ()):
        if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
            layers.append(_linear(layer))
        elif isinstance(layer, torch.nn.Tanh):
            layers.append(None)
        else:
            return None
    head, log_std = getattr(pi, "mean", None), getattr(pi, "log_std", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is None or log_std is None:
        return None
    w_out, b_out = _linear(head)
    log_std_np = log_std.detach().cpu().numpy().astype(np.float32)
    log_std_rows: dict[int, np.ndarray] = {}  # batch size -> log_std repeated (read-only)
    obs_filter = getattr(pi, "obs_filter", None)
    normalise = None if obs_filter is None else numpy_filter(obs_filter)

    def policy(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = obs if normalise is None else normalise(obs)
        for layer in layers:
            x = np.tanh(x) if layer is None else x @ layer[0] + layer[1]
        mean = x @ w_out + b_out
        rows = log_std_rows.get(len(mean))
        if rows is None:
            rows = log_std_rows[len(mean)] = np.tile(log_std_np, (len(mean), 1))
            rows.flags.writeable = False
        return mean, rows

    return policy


def _linear(layer: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """(W^T, b) of a Linear layer as contiguous float32 arrays."""
    weight = layer.weight.detach().cpu().numpy().astype(np.float32)
    return np.ascontiguousarray(weight.T), layer.bias.detach().cpu().numpy().astype(np.float32)


def torch_policy(pi: torch.nn.Module) -> PolicyFn:
    """``pi``'s (mean, log_std) through torch (no grad), for any ``pi`` of that signature."""

    def policy(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            mean, log_std = pi(torch.from_numpy(obs))
        return mean.detach().numpy(), log_std.detach().numpy()

    return policy


def sampling_policy(pi: torch.nn.Module, params: Optional[Params] = None) -> PolicyFn:
    """The sampling policy of ``pi`` (a GaussianMLP or any obs -> (mean, log_std) module),
    at ``params`` (name -> tensor, e.g. θ plus a step) when given, else at its own weights:
    a numpy copy when ``pi`` has the GaussianMLP structure, else through torch."""
    if params is not None:
        pi = copy.deepcopy(pi)
        with torch.no_grad():
            pi.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
    return numpy_policy(pi) or torch_policy(pi)


def action_bounds(space: Any) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of a Box action space as float32: the clip bounds of the env actions."""
    return space.low.astype(np.float32), space.high.astype(np.float32)


def gaussian_logp(mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Diagonal-Gaussian log-density summed over action dims (``optim.policy.log_prob``)."""
    z = (actions.astype(np.float64) - mean) * np.exp(-log_std.astype(np.float64))
    return (-0.5 * z * z - log_std - _HALF_LOG_2PI).sum(-1)


# -- episodes -------------------------------------------------------------------------------
@dataclass
class _Episode:
    """An episode being collected on one sub-env."""

    index: int
    rng: np.random.Generator
    obs: np.ndarray
    start: float = field(default_factory=time.perf_counter)
    cols: dict[str, list] = field(
        default_factory=lambda: {k: [] for k in ("obs", "actions", "mean", "log_std",
                                                 "rewards", "costs")})
    task_ids: set[int] = field(default_factory=set)

    def add(self, action: np.ndarray, mean: np.ndarray, log_std: np.ndarray, next_obs: Any,
            reward: float, info: Mapping[str, Any]) -> None:
        self.cols["obs"].append(self.obs)
        self.cols["actions"].append(action)
        self.cols["mean"].append(mean)
        self.cols["log_std"].append(log_std)
        self.cols["rewards"].append(reward)
        self.cols["costs"].append(float(info.get("cost", 0.0)))
        if "task_id" in info:
            self.task_ids.add(int(info["task_id"]))
        self.obs = _as_obs(next_obs)

    def data(self) -> EpisodeData:
        """The episode's arrays; the log-probs are computed here, for all steps at once."""
        n = len(self.cols["rewards"])
        actions = np.asarray(self.cols["actions"], dtype=np.float32).reshape(n, -1)
        logp = gaussian_logp(np.asarray(self.cols["mean"]).reshape(n, -1),
                             np.asarray(self.cols["log_std"]).reshape(n, -1), actions)
        return EpisodeData(
            obs=np.asarray(self.cols["obs"], dtype=np.float32).reshape(n, -1),
            actions=actions,
            logp=logp.astype(np.float32).reshape(n),
            rewards=np.asarray(self.cols["rewards"], dtype=np.float64).reshape(n),
            costs=np.asarray(self.cols["costs"], dtype=np.float64).reshape(n),
        )


def _as_obs(obs: Any) -> np.ndarray:
    return np.asarray(obs, dtype=np.float32).reshape(-1)


#: Spawn key of every evaluation seed sequence (learning jobs' sequences have none at the root).
EVAL_SPAWN_KEY = (0x45564C,)  # "EVL"
_HALF = 1 << 31


def evaluation_seed(eval_seed: int, task: Mapping[str, Any]) -> dict[str, Any]:
    """The seed of an evaluation job: depends only on ``eval_seed`` and the task's identity
    (its id and layout parameters, not its cost limit), so every adaptation step, every
    algorithm and every training seed evaluated with the same ``eval_seed`` meets the same
    env seeds and action noise (common random numbers); episode i of the job is the i-th
    child of this sequence."""
    params = json.dumps(task.get("params", {}), sort_keys=True, default=str)
    digest = int.from_bytes(hashlib.sha256(params.encode()).digest()[:8], "little")
    return {"entropy": [int(eval_seed), int(task.get("task_id", 0)) & 0xFFFFFFFF, digest],
            "evaluation": True}


def episode_streams(num_episodes: int, seed: Optional[int | Mapping[str, Any]]
                    ) -> list[tuple[Optional[int], np.random.Generator]]:
    """(reset seed, noise generator) of each episode of a job. With ``seed`` None the
    resets are unseeded (each env's own RNG goes on) and the noise comes from fresh OS
    entropy. An int ``seed`` is a learning job's: reset seeds in [0, 2³¹). An evaluation
    job's seed (:func:`evaluation_seed`) gives reset seeds in [2³¹, 2³²) and noise from a
    sequence under :data:`EVAL_SPAWN_KEY`."""
    if isinstance(seed, Mapping):
        root = np.random.SeedSequence([int(x) for x in seed["entropy"]],
                                      spawn_key=EVAL_SPAWN_KEY)
        offset = _HALF
    else:
        root = np.random.SeedSequence(None if seed is None else int(seed))
        offset = 0
    streams = []
    for child in root.spawn(num_episodes):
        env_seq, noise_seq = child.spawn(2)
        reset_seed = None if seed is None else \
            offset + int(env_seq.generate_state(1)[0]) % _HALF
        streams.append((reset_seed, np.random.default_rng(noise_seq)))
    return streams


def rollout(envs: Sequence[Any], policy: PolicyFn, num_episodes: int,
            seed: Optional[int | Mapping[str, Any]] = None, low: Optional[np.ndarray] = None,
            high: Optional[np.ndarray] = None, deterministic: bool = False,
            on_episode: Optional[Callable[[int], None]] = None,
            ) -> tuple[list[EpisodeData], list[list[int]], list[float]]:
    """Roll out ``num_episodes`` complete episodes on ``envs`` (gymnasium envs, set to
    the task), every env running whole episodes one after another and all busy envs
    stepped together (one ``policy`` call per step). Actions sent to the envs are clipped
    to ``[low, high]`` when given; ``deterministic`` takes the mean action (no noise).
    Returns (episodes, task ids seen per episode, wall seconds per episode), in episode
    order. ``seed``: see :func:`episode_streams`. ``on_episode(index)`` is called as each
    episode ends (e.g. a progress bar).
    """
    streams = episode_streams(num_episodes, seed)
    done: dict[int, tuple[EpisodeData, list[int], float]] = {}
    active: dict[int, _Episode] = {}
    queue = iter(range(num_episodes))
    for slot in range(min(len(envs), num_episodes)):
        active[slot] = _start(envs[slot], next(queue), streams)
    while active:
        slots = list(active)
        if len(slots) == 1:  # one busy env: no stacking (most of a rollout's steps at N = 1)
            only = active[slots[0]]
            mean, log_std = policy(only.obs[None])
            noise = only.rng.standard_normal((1, mean.shape[1]), dtype=np.float32)
        else:
            mean, log_std = policy(np.stack([active[s].obs for s in slots]))
            noise = np.stack([active[s].rng.standard_normal(mean.shape[1], dtype=np.float32)
                              for s in slots])
        if deterministic:
            noise = np.zeros_like(noise)
        actions = (mean + np.exp(log_std) * noise).astype(np.float32)
        env_actions = actions if low is None else np.clip(actions, low, high)
        for i, slot in enumerate(slots):
            ep = active[slot]
            next_obs, reward, terminated, truncated, info = envs[slot].step(env_actions[i])
            ep.add(actions[i], mean[i], log_std[i], next_obs, float(reward), info)
            if terminated or truncated:
                done[ep.index] = (ep.data(), sorted(ep.task_ids),
                                  time.perf_counter() - ep.start)
                if on_episode is not None:
                    on_episode(ep.index)
                index = next(queue, None)
                if index is None:
                    del active[slot]
                else:
                    active[slot] = _start(envs[slot], index, streams)
    ordered = [done[i] for i in range(num_episodes)]
    return [d for d, _, _ in ordered], [t for _, t, _ in ordered], [s for _, _, s in ordered]


def sample_episodes(env: Any, policy: PolicyFn, num_episodes: int,
                    seed: Optional[int | Mapping[str, Any]] = None) -> list[EpisodeData]:
    """``num_episodes`` episodes of ``env``'s current task, as a learning job of an EnvRunner
    samples them (actions clipped to ``env.action_space``, the conventions of this module):
    the Ray-free entry point for tests and research scripts."""
    low, high = action_bounds(env.action_space)
    return rollout([env], policy, num_episodes, seed, low, high)[0]


def _start(env: Any, index: int, streams: Sequence[tuple[Optional[int], np.random.Generator]]
           ) -> _Episode:
    reset_seed, rng = streams[index]
    obs, _ = env.reset(seed=reset_seed)
    return _Episode(index=index, rng=rng, obs=_as_obs(obs))


def evaluation_summary(episodes: Sequence[EpisodeData], seed: Optional[Mapping[str, Any]],
                       num_episodes: int) -> dict[str, list]:
    """What an evaluation job returns: per episode return, cost (sums over steps), length,
    largest per-step cost and reset seed."""
    return {
        "returns": [float(d.rewards.sum()) for d in episodes],
        "costs": [float(d.costs.sum()) for d in episodes],
        "lengths": [len(d) for d in episodes],
        "max_step_costs": [float(d.costs.max()) if len(d) else 0.0 for d in episodes],
        "reset_seeds": [s for s, _ in episode_streams(num_episodes, seed)],
    }
