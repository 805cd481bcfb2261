"""MetaCPO(Algorithm) and its variants: per meta-iteration, K + 1 sampling rounds, then meta_update."""
from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_UPDATE_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from metacpo_rllib.envs.base import Task
from metacpo_rllib.rllib.config import CPOConfig, MetaCPOConfig, MetaTRPOConfig, TRPOConfig
from metacpo_rllib.rllib.episodes import sample_jobs
from metacpo_rllib.rllib.metrics import METRICS_KEY, iteration_metrics
from metacpo_rllib.rllib.registry import register_envs

_STATE_KEY = "metacpo"


class CheckpointError(OSError):
    """Writing a checkpoint failed (unwritable directory, full disk, ...); the algorithm's
    in-memory state is untouched and training can go on."""


class MetaCPO(Algorithm):
    """Meta-CPO on RLlib's new API stack (Meta-TRPO / CPO / TRPO through the config).

    Each ``training_step``: sample T train tasks from the task RNG, assign them
    round-robin to the healthy EnvRunners, run K + 1 sampling rounds (the Learner adapts
    the tasks' weights between rounds with optim's ``inner_steps``), then the Learner's
    ``meta_step`` (optim's ``meta_update``) and a broadcast of θ.
    """

    config: MetaCPOConfig

    @classmethod
    def get_default_config(cls) -> MetaCPOConfig:
        return MetaCPOConfig(cls)

    def setup(self, config: MetaCPOConfig) -> None:
        register_envs()  # the family names must be known to this Ray instance's runners
        super().setup(config)
        self.family = self.config.make_family()
        self._task_rng = np.random.default_rng(self.config.seed)
        # Seeds of the sampling jobs (env resets and action noise), apart from the task RNG
        # so that the task sequence does not depend on the number of sampling rounds.
        self._sample_rng = np.random.default_rng(
            None if self.config.seed is None else [int(self.config.seed), 1])
        self._meta_iterations = 0

    # -- training ----------------------------------------------------------------------------
    def sample_train_tasks(self) -> list[Task]:
        """The next T training tasks (drawn from the algorithm's task RNG)."""
        seed = int(self._task_rng.integers(0, 2**63 - 1))
        return self.family.sample_tasks(self.config.tasks_per_iteration, "train", seed=seed,
                                        cost_limit=self.config.cost_limit)

    def training_step(self) -> None:
        tasks = self.sample_train_tasks()
        rounds, placements, times = self._run_rounds(
            tasks, self.config.update_config().inner_steps + 1, "add_round")
        start = time.perf_counter()
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            info = self._learner_call("meta_step")
        times["learner_s"] += time.perf_counter() - start
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True)
        self._meta_iterations += 1
        metrics = iteration_metrics(tasks, rounds, info, placements, times)
        metrics["meta_iteration"] = self._meta_iterations
        for key, value in _flatten(metrics):
            self.metrics.log_value((METRICS_KEY, *key), value, reduce="item")
        return None

    # -- test-time adaptation ----------------------------------------------------------------
    def adapt(self, tasks: Sequence[Task | Mapping[str, Any]], steps: int = 1,
              episodes_per_task: Optional[int] = None) -> dict[str, Any]:
        """Adapt θ to each task for ``steps`` updates and measure every step.

        Step 0 is θ itself; step s samples with the parameters after s adaptation steps
        (optim ``adaptation_step``: the inner step for meta algorithms, the CPO/TRPO
        update otherwise). θ is unchanged afterwards. Returns per task the return, cost and
        violation at each step, plus their means over tasks.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
        if episodes_per_task is not None and (
                isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int)
                or episodes_per_task < 1):
            raise ValueError(f"episodes_per_task: expected an integer >= 1, "
                             f"got {episodes_per_task!r}")
        tasks = [self.family.validate_task(t) for t in tasks]
        if not tasks:
            raise ValueError("tasks: need at least one task")
        rounds, _, times = self._run_rounds(tasks, steps + 1, "adapt_round", episodes_per_task)
        self.env_runner_group.sync_weights(
            from_worker_or_learner_group=self.learner_group, inference_only=True)
        per_task = []
        for i, task in enumerate(tasks):
            ret = [_get(r[i], "mean_return") for r in rounds]
            cost = [_get(r[i], "mean_cost") for r in rounds]
            per_task.append({"task": task.to_dict(), "task_id": task.task_id,
                             "cost_limit": task.cost_limit, "return": ret, "cost": cost,
                             "violation": [bool(c > task.cost_limit) for c in cost]})

        def mean(key: str, s: int) -> float:
            values = [float(t[key][s]) for t in per_task if not math.isnan(t["cost"][s])]
            return float(np.mean(values)) if values else math.nan

        return {
            "algorithm": type(self).__name__, "family": self.family.name,
            "steps": list(range(steps + 1)), "tasks": per_task,
            "mean_return": [mean("return", s) for s in range(steps + 1)],
            "mean_cost": [mean("cost", s) for s in range(steps + 1)],
            "violation_rate": [mean("violation", s) for s in range(steps + 1)],
            "time_s": times,
        }

    # -- the sampling rounds -------------------------------------------------------------------
    def _run_rounds(self, tasks: Sequence[Task], num_rounds: int, learner_method: str,
                    episodes_per_task: Optional[int] = None
                    ) -> tuple[list[list[Optional[dict]]], list[tuple[int, str]], dict[str, float]]:
        """Sample every task ``num_rounds`` times, each round with the weights the
        Learner returned for the task in the previous round (θ in round 0).

        Returns the Learner's per-task batch summaries of each round (None: task dropped),
        the (EnvRunner index, Ray node id) that sampled each task (last round) and the time
        split.
        """
        num_eps = episodes_per_task or self.config.episodes_per_task
        times = {"sample_s": 0.0, "learner_s": 0.0, "env_steps": 0}
        theta = self._learner_call("begin", num_tasks=len(tasks))
        weights: list[Optional[dict]] = [theta] * len(tasks)
        rounds, placements = [], [(-1, "")] * len(tasks)
        for k in range(num_rounds):
            start = time.perf_counter()
            seeds = [int(x) for x in self._sample_rng.integers(0, 2**31 - 1, size=len(tasks))]
            with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
                samples = self.sample_episodes(tasks, weights, num_eps, seeds=seeds)
            times["sample_s"] += time.perf_counter() - start
            for i, sample in enumerate(samples):
                if sample is not None:
                    placements[i] = (sample["worker_index"], sample["node_id"])
                    times["env_steps"] += sample["num_env_steps"]
            start = time.perf_counter()
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                if learner_method == "add_round":
                    out = self._learner_call("add_round", round_index=k,
                                             samples=_learner_inputs(tasks, samples))
                else:
                    out = self._learner_call("adapt_round", samples=_learner_inputs(tasks, samples),
                                             update=k < num_rounds - 1)
            times["learner_s"] += time.perf_counter() - start
            rounds.append(out["summaries"])
            # A task stays in the next round only if it got (adapted) weights.
            weights = out["weights"] if k < num_rounds - 1 else weights
        return rounds, placements, times

    def sample_episodes(self, tasks: Sequence[Task], weights: Sequence[Optional[dict]],
                        num_episodes: int, seeds: Optional[Sequence[int]] = None
                        ) -> list[Optional[dict]]:
        """Sample ``num_episodes`` episodes of each task with its weights (tasks whose
        weights are None are skipped) on the EnvRunners; see ``episodes.sample_jobs``.

        Tasks go round-robin to the healthy remote EnvRunners (each runner works through
        its share in one call); with no remote runners the local one does them in turn.
        A runner that fails is restarted by RLlib and its tasks are re-sent (task and
        weights are part of every job) until ``num_consecutive_env_runner_failures_tolerance``
        attempts are used up. ``seeds`` (one per task) seed each job's env resets and action
        noise, so a re-sent job samples the same episodes and a restored checkpoint
        continues the same stream.
        """
        jobs = [{"job": i, "task": task.to_dict(), "weights": w, "num_episodes": num_episodes,
                 "seed": None if seeds is None else int(seeds[i])}
                for i, (task, w) in enumerate(zip(tasks, weights)) if w is not None]
        results: dict[int, dict] = {}
        group = self.env_runner_group
        if group.num_remote_env_runners() == 0:
            out = sample_jobs(self.env_runner, jobs)
            self.metrics.aggregate([out["metrics"]], key=ENV_RUNNER_RESULTS)
            results = {r["job"]: r for r in out["results"]}
        else:
            attempts = max(1, int(self.config.num_consecutive_env_runner_failures_tolerance) + 1)
            for _ in range(attempts):
                pending = [job for job in jobs if job["job"] not in results]
                if not pending:
                    break
                runner_ids = group.healthy_env_runner_ids()
                if not runner_ids:
                    self.restore_env_runners(group)
                    time.sleep(1.0)
                    continue
                shares = {rid: pending[n::len(runner_ids)] for n, rid in enumerate(runner_ids)}
                rids = [rid for rid in runner_ids if shares[rid]]
                outs = group.foreach_env_runner(
                    [sample_jobs] * len(rids), kwargs=[{"jobs": shares[r]} for r in rids],
                    local_env_runner=False, remote_worker_ids=rids)
                self.metrics.aggregate([o["metrics"] for o in outs], key=ENV_RUNNER_RESULTS)
                results.update({r["job"]: r for o in outs for r in o["results"]})
                if len(results) < len(jobs):
                    self.restore_env_runners(group)
        missing = [job["job"] for job in jobs if job["job"] not in results]
        if missing:
            raise RuntimeError(f"sampling failed for tasks {missing} after repeated "
                               "EnvRunner failures")
        for i, result in results.items():
            seen = {t for ids in result["episode_task_ids"] for t in ids}
            if seen != {tasks[i].task_id}:
                raise RuntimeError(f"task {tasks[i].task_id} was sent to EnvRunner "
                                   f"{result['worker_index']} but its episodes carry task ids "
                                   f"{sorted(seen)}")
        return [results.get(i) for i in range(len(tasks))]

    def _learner_call(self, method: str, **kwargs: Any) -> Any:
        """Call ``method`` of the (single) Learner with ``kwargs`` and return its result."""
        results = self.learner_group.foreach_learner(
            lambda learner, **kw: getattr(learner, method)(**kw), **kwargs)
        result = next(iter(results))
        if not result.ok:
            raise result.get()
        return result.get()

    # -- checkpointing ---------------------------------------------------------------------
    def save_to_path(self, path: Any = None, *, state: Optional[dict] = None,
                     filesystem: Any = None, use_msgpack: bool = False) -> str:
        """RLlib's ``save_to_path``; an OSError becomes a :class:`CheckpointError` naming the
        path, and a checkpoint folder this call created is removed (no half-written
        checkpoint is left behind). Saving only reads the training state."""
        local = path is not None and filesystem is None and "://" not in str(path)
        existed = local and os.path.exists(str(path))
        try:
            return super().save_to_path(path, state=state, filesystem=filesystem,
                                        use_msgpack=use_msgpack)
        except OSError as err:
            if local and not existed:
                shutil.rmtree(str(path), ignore_errors=True)
            raise CheckpointError(
                err.errno, f"could not write the checkpoint to {path}: "
                f"{err.strerror or err}; the training state in memory is unchanged "
                "(free space or choose a writable directory and save again)") from err

    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[_STATE_KEY] = {"task_rng": self._task_rng.bit_generator.state,
                             "sample_rng": self._sample_rng.bit_generator.state,
                             "meta_iterations": self._meta_iterations}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if _STATE_KEY in state:
            self._task_rng.bit_generator.state = state[_STATE_KEY]["task_rng"]
            if "sample_rng" in state[_STATE_KEY]:  # (absent from older checkpoints)
                self._sample_rng.bit_generator.state = state[_STATE_KEY]["sample_rng"]
            self._meta_iterations = int(state[_STATE_KEY]["meta_iterations"])


class MetaTRPO(MetaCPO):
    """Meta-TRPO: the same algorithm with unconstrained steps."""

    @classmethod
    def get_default_config(cls) -> MetaTRPOConfig:
        return MetaTRPOConfig(cls)


class CPO(MetaCPO):
    """CPO: the same algorithm with no inner loop (K = 0)."""

    @classmethod
    def get_default_config(cls) -> CPOConfig:
        return CPOConfig(cls)


class TRPO(MetaCPO):
    """TRPO: no inner loop and unconstrained steps."""

    @classmethod
    def get_default_config(cls) -> TRPOConfig:
        return TRPOConfig(cls)


def _learner_inputs(tasks: Sequence[Task], samples: Sequence[Optional[dict]]
                    ) -> list[Optional[dict]]:
    return [None if s is None else
            {"episodes": s["episodes"], "task_id": t.task_id, "cost_limit": t.cost_limit}
            for t, s in zip(tasks, samples)]


def _get(summary: Optional[dict], key: str) -> float:
    return math.nan if summary is None else float(summary[key])


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value
