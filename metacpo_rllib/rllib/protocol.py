"""The typed messages between the Algorithm, its EnvRunners and its Learner (no Ray).

One meta-iteration sends :class:`SampleJob` s to the EnvRunners (``episodes.sample_jobs``),
gets a :class:`SampleResult` back per job and hands the learning results of a round to the
Learner, which answers with a :class:`RoundOutput`. Every job and result carries its
:class:`~metacpo_rllib.envs.base.Task`, so a task's cost limit and id travel with its
samples: nothing is matched by list position or by value. All three are frozen
dataclasses of picklable fields (what Ray sends between processes).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

from metacpo_rllib.envs.base import Task
from metacpo_rllib.optim import EpisodeData
from metacpo_rllib.rollout import evaluation_seed

#: A learning job: its episodes come back to be learned from and count in the runner's
#: sampling metrics.
LEARN = "learn"
#: An evaluation job with sampled actions: only per-episode figures come back.
EVAL = "eval"
#: An evaluation job with the mean action.
EVAL_MEAN_ACTION = "eval_mean_action"
MODES = (LEARN, EVAL, EVAL_MEAN_ACTION)

#: A job's seed: an int (learning), an ``evaluation_seed`` mapping (evaluation) or None.
Seed = Union[int, Mapping[str, Any], None]


@dataclasses.dataclass(frozen=True)
class SampleJob:
    """Sample ``num_episodes`` whole episodes of ``task`` with ``weights`` (an RLModule
    state dict; None: the runner's current weights) from ``seed``; ``job`` numbers the
    job within one call of ``episodes.sample_jobs``."""

    job: int
    task: Task
    weights: Optional[Mapping[str, Any]]
    num_episodes: int
    seed: Seed = None
    mode: str = LEARN

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.evaluation != isinstance(self.seed, Mapping):
            raise ValueError(f"seed: an evaluation job takes an evaluation_seed mapping and "
                             f"a learning job an int or None, got {self.seed!r} for mode "
                             f"{self.mode!r}")

    @property
    def evaluation(self) -> bool:
        """True for an evaluation job (per-episode figures only, not counted in the
        runner's sampling metrics)."""
        return self.mode != LEARN

    @property
    def deterministic(self) -> bool:
        """True when the job takes the mean action."""
        return self.mode == EVAL_MEAN_ACTION

    @classmethod
    def learning(cls, job: int, task: Task, weights: Optional[Mapping[str, Any]],
                 num_episodes: int, seed: Optional[int] = None) -> "SampleJob":
        """A learning job."""
        return cls(job, task, weights, int(num_episodes), None if seed is None else int(seed))

    @classmethod
    def evaluating(cls, job: int, task: Task, weights: Optional[Mapping[str, Any]],
                   num_episodes: int, eval_seed: int, deterministic: bool = False
                   ) -> "SampleJob":
        """An evaluation job on the task's common random numbers
        (``rollout.evaluation_seed(eval_seed, task)``)."""
        return cls(job, task, weights, int(num_episodes),
                   evaluation_seed(eval_seed, task.to_dict()),
                   EVAL_MEAN_ACTION if deterministic else EVAL)


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """What one :class:`SampleJob` gave: the job's number, mode and task, where and how
    long it ran, and either its ``episodes`` (learning) or ``evaluation``, the per-episode
    figures of ``rollout.evaluation_summary`` (``returns``, ``costs``, ``lengths``,
    ``max_step_costs``, ``reset_seeds``)."""

    job: int
    task: Task
    mode: str = LEARN
    episodes: Sequence[EpisodeData] = ()
    evaluation: Optional[Mapping[str, list]] = None
    episode_task_ids: Sequence[Sequence[int]] = ()
    num_env_steps: int = 0
    sample_s: float = 0.0
    worker_index: int = 0
    node_id: str = ""

    @property
    def returns(self) -> list[float]:
        """Per-episode returns."""
        if self.evaluation is not None:
            return list(self.evaluation["returns"])
        return [float(d.rewards.sum()) for d in self.episodes]

    @property
    def costs(self) -> list[float]:
        """Per-episode costs (sums of the per-step costs)."""
        if self.evaluation is not None:
            return list(self.evaluation["costs"])
        return [float(d.costs.sum()) for d in self.episodes]


@dataclasses.dataclass(frozen=True)
class RoundOutput:
    """The Learner's answer to one round of learning results (lists in the order of the
    round's tasks): per task its batch summary (``learner.batch_summary``, with the task's
    id and cost limit; None: dropped) and the weights to sample it with next (None: no
    next round for it), the tasks dropped so far (slot → reason) and, in adaptation with
    an update, per task the step's calibration record (``learner.step_record``)."""

    summaries: Sequence[Optional[Mapping[str, float]]]
    weights: Sequence[Optional[Mapping[str, Any]]]
    dropped: Mapping[int, str]
    steps: Optional[Sequence[Optional[Mapping[str, float]]]] = None
