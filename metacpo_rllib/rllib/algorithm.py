"""MetaCPO(Algorithm) and its variants: per meta-iteration, K + 1 sampling rounds, then meta_update."""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
import shutil
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

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
from metacpo_rllib.evaluation_stats import CONFIDENCE, cost_stats, pooled_cost_stats
from metacpo_rllib.evaluation_stats import episode_cost_bound as _cost_bound
from metacpo_rllib.rllib.episodes import sample_jobs
from metacpo_rllib.rllib.learner import MetaCPOTorchLearner
from metacpo_rllib.rllib.metrics import METRICS_KEY, iteration_metrics
from metacpo_rllib.rllib.protocol import RoundOutput, SampleJob, SampleResult
from metacpo_rllib.rllib.registry import register_envs

if TYPE_CHECKING:
    from metacpo_rllib.policy import Policy

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

    #: Called as ``on_round(k, num_rounds)`` after each sampling round of ``train`` and
    #: ``adapt`` (round k of num_rounds; e.g. a progress bar); None: nothing.
    on_round: Optional[Callable[[int, int], None]] = None

    @classmethod
    def get_default_config(cls) -> MetaCPOConfig:
        return MetaCPOConfig(cls)

    def setup(self, config: MetaCPOConfig) -> None:
        register_envs()  # the family names must be known to this Ray instance's runners
        super().setup(config)
        self.family = self.config.make_family()
        # the curriculum's first family (None: no curriculum): see sample_train_tasks
        self._curriculum_family = (self.config.make_family(curriculum=True)
                                   if self.config.curriculum_iterations else None)
        self._task_rng = np.random.default_rng(self.config.seed)
        # Seeds of the sampling jobs (env resets and action noise), apart from the task RNG
        # so that the task sequence does not depend on the number of sampling rounds.
        self._sample_rng = np.random.default_rng(
            None if self.config.seed is None else [int(self.config.seed), 1])
        self._meta_iterations = 0
        # For the training ledger: the last update's statistics and the last evaluation.
        self._last_update: dict[str, Any] = {}
        self._last_eval: dict[str, Any] = {}

    # -- training ----------------------------------------------------------------------------
    def sample_train_tasks(self) -> list[Task]:
        """The next T training tasks (drawn from the algorithm's task RNG), from the
        curriculum's ranges during its first ``curriculum_iterations`` meta-iterations."""
        seed = int(self._task_rng.integers(0, 2**63 - 1))
        family = (self._curriculum_family
                  if self._meta_iterations < self.config.curriculum_iterations
                  else self.family)
        return family.sample_tasks(self.config.tasks_per_iteration, "train", seed=seed,
                                   cost_limit=self.config.train_cost_limit)

    def training_step(self) -> None:
        tasks = self.sample_train_tasks()
        rounds, placements, times, _ = self._run_rounds(
            tasks, self.config.update_config().inner_steps + 1,
            lambda learner, k, samples: learner.add_round(k, samples))
        start = time.perf_counter()
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            info = self._on_learner(lambda learner: learner.meta_step())
        times["learner_s"] += time.perf_counter() - start
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True)
        self._meta_iterations += 1
        self._last_update = {"meta_iteration": self._meta_iterations, **info}
        metrics = iteration_metrics(tasks, rounds, info, placements, times)
        metrics["meta_iteration"] = self._meta_iterations
        for key, value in _flatten(metrics):
            self.metrics.log_value((METRICS_KEY, *key), value, reduce="item")
        return None

    # -- test-time adaptation ----------------------------------------------------------------
    def adapt(self, tasks: Sequence[Task | Mapping[str, Any]], steps: int = 1,
              episodes_per_task: Optional[int] = None, eval_episodes: int = 20,
              deterministic: bool = False, eval_seed: int = 0,
              return_policies: bool = False) -> dict[str, Any]:
        """Adapt θ to each task for ``steps`` updates and measure every step.

        Step 0 is θ itself; step s samples with the parameters after s adaptation steps
        (optim ``adaptation_step``: the inner step for meta algorithms, the CPO/TRPO
        update otherwise). θ is unchanged afterwards.

        Two measurements per task and step. The *learning batch* (``episodes_per_task``
        episodes; None: the config's ``adaptation_episodes_per_task``, else its
        ``episodes_per_task``) is what the step learns from: its mean return and
        cost are reported as ``return`` / ``cost`` / ``violation`` (and ``mean_return`` /
        ``mean_cost`` / ``violation_rate`` over tasks), and the J_C its step used (c =
        J_C − h: the batch's mean or upper bound, pooled with up to
        ``adaptation_cost_window`` earlier episodes) as ``cost_estimate`` and the task's
        learned margin in c as ``cost_margin`` (``adaptation_cost_margin_rate``); they are noisy
        and the step is fit to them. The *evaluation* (``eval_episodes`` fresh episodes, 0:
        off) is the honest figure: sampled on the EnvRunners beside the batch, with sampled
        actions (the deployed policy; ``deterministic=True`` also evaluates the mean action,
        under ``eval_mean_action``), and with common random numbers: episode i of a task
        gets the same env seed and action noise at every step, for every algorithm and training
        seed, given ``eval_seed`` (``episodes.evaluation_seed``), never a seed of a learning
        batch. Per task ``eval`` holds per step ``return``, ``cost``, ``cost_se``,
        ``cost_ucb`` (one-sided 95%, ``evaluation_stats``), ``within_limit`` (mean ≤ h),
        ``certified`` (upper bound ≤ h) and the per-episode ``episode_cost``; ``ledger``
        holds per adaptation step the predicted cost change (bᵀx × the accepted
        line-search fraction), the change realised on the evaluation episodes (paired, with
        its standard error), the CPO case and the KL (``evaluation_stats.calibration_table``
        tabulates it). The report's ``eval`` holds the means over tasks per step. With
        ``adaptation_backtracks`` each ledger entry also holds the step's ``rejections``
        and the ``fraction`` of it that stood, and the report's ``rejections`` the
        rejected batches per adaptation step, summed over tasks.

        With ``return_policies`` the report also holds ``policies``: per task (in the order
        of ``tasks``), the adapted policy after the last step as a Ray-free
        :class:`~metacpo_rllib.policy.Policy` (``.act``, ``.save``; None for a task dropped
        on non-finite data). They are objects, not JSON: pop them before dumping the report.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
        if episodes_per_task is not None and (
                isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int)
                or episodes_per_task < 1):
            raise ValueError(f"episodes_per_task: expected an integer >= 1, "
                             f"got {episodes_per_task!r}")
        if isinstance(eval_episodes, bool) or not isinstance(eval_episodes, int) \
                or eval_episodes < 0:
            raise ValueError(f"eval_episodes: expected an integer >= 0, got {eval_episodes!r}")
        if isinstance(eval_seed, bool) or not isinstance(eval_seed, int) or eval_seed < 0:
            raise ValueError(f"eval_seed: expected an integer >= 0, got {eval_seed!r}")
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic: expected a bool, got {deterministic!r}")
        if not isinstance(return_policies, bool):
            raise ValueError(f"return_policies: expected a bool, got {return_policies!r}")
        tasks = [self.family.validate_task(t) for t in tasks]
        if not tasks:
            raise ValueError("tasks: need at least one task")
        episodes_per_task = (episodes_per_task or self.config.adaptation_episodes_per_task
                             or self.config.episodes_per_task)
        modes = [] if eval_episodes == 0 else [False, True] if deterministic else [False]
        evaluation = EvalPlan(eval_episodes, eval_seed, tuple(modes))
        checking = bool(self.config.adaptation_backtracks) and self.config.constrained
        first_episodes = self.config.adaptation_first_episodes_per_task  # step 0's batch only
        rounds, _, times, extra = self._run_rounds(
            tasks, steps + 1,
            lambda learner, k, samples: learner.adapt_round(samples, update=k < steps),
            episodes_per_task, evaluation, check_steps=checking,
            first_round_episodes=first_episodes)
        self.env_runner_group.sync_weights(
            from_worker_or_learner_group=self.learner_group, inference_only=True)
        per_task = []
        for i, task in enumerate(tasks):
            ret = [_get(r[i], "mean_return") for r in rounds]
            cost = [_get(r[i], "mean_cost") for r in rounds]
            entry = {"task": task.to_dict(), "task_id": task.task_id,
                     "cost_limit": task.cost_limit, "return": ret, "cost": cost,
                     "cost_estimate": [_get(r[i], "constraint_cost") for r in rounds],
                     "cost_margin": [_get(r[i], "cost_margin") for r in rounds],
                     "violation": [bool(c > task.cost_limit) for c in cost],
                     "batch_episodes": [None if r[i] is None else int(r[i]["num_episodes"])
                                        for r in rounds]}
            for mode in modes:
                key = "eval_mean_action" if mode else "eval"
                entry[key] = task_evaluation([e[mode][i] for e in extra["eval"]],
                                             task.cost_limit)
            if modes:
                entry["ledger"] = ledger(entry["eval"], [st[i] for st in extra["steps"]],
                                         cost)
            per_task.append(entry)

        def mean(key: str, s: int) -> float:
            values = [float(t[key][s]) for t in per_task if not math.isnan(t["cost"][s])]
            return float(np.mean(values)) if values else math.nan

        report = {
            "algorithm": type(self).__name__, "family": self.family.name,
            "steps": list(range(steps + 1)), "tasks": per_task,
            # learning-batch figures (what each step learned from)
            "batch_episodes": int(episodes_per_task),
            "mean_return": [mean("return", s) for s in range(steps + 1)],
            "mean_cost": [mean("cost", s) for s in range(steps + 1)],
            "violation_rate": [mean("violation", s) for s in range(steps + 1)],
            "time_s": times,
        }
        if first_episodes:
            report["first_batch_episodes"] = int(first_episodes)
        if checking:  # per adaptation step s (into step s + 1), rejected batches over tasks
            report["rejections"] = [sum(r.get("rejections", 0.0) for r in records if r)
                                    for records in extra["steps"]]
        for mode in modes:
            key = "eval_mean_action" if mode else "eval"
            report[key] = evaluation_means([t[key] for t in per_task], steps + 1,
                                           eval_episodes, eval_seed, mode)
        if return_policies:
            report["policies"] = [
                None if w is None else self.as_policy(
                    w, source=f"{self.family.name} task {t.task_id} after {steps} step(s)")
                for t, w in zip(tasks, extra["weights"])]
        return report

    def as_policy(self, weights: Optional[Mapping[str, Any]] = None, source: str = ""
                  ) -> "Policy":
        """θ (or ``weights``, an RLModule state dict such as an adapted task's) as a
        Ray-free :class:`~metacpo_rllib.policy.Policy`; ``.save(path)`` writes it as an
        RLModule checkpoint that ``load_policy`` and ``RLModule.from_checkpoint`` load."""
        from ray.rllib.utils.checkpoints import CHECKPOINT_VERSION_LEARNER_AND_ENV_RUNNER

        from metacpo_rllib.policy import ModuleHeader, policy_from_weights

        module = self.get_module()
        ctor = pickle.dumps({"class": type(module),
                             "ctor_args_and_kwargs": module.get_ctor_args_and_kwargs()})
        metadata = {"checkpoint_version": str(CHECKPOINT_VERSION_LEARNER_AND_ENV_RUNNER),
                    **module.get_metadata()}
        if weights is None:
            weights = self._on_learner(lambda learner: learner.theta_weights())
            source = source or f"{type(self).__name__} θ ({self.family.name})"
        return policy_from_weights(weights, module.observation_space, module.action_space,
                                   header=ModuleHeader(metadata, ctor), source=source)

    # -- training evaluation ------------------------------------------------------------------
    @classmethod
    def _should_create_evaluation_env_runners(cls, eval_config: Any) -> bool:
        """No separate evaluation EnvRunners: evaluation runs on the training EnvRunners,
        between iterations, when they are idle."""
        return False

    def evaluation_tasks(self) -> list[Task]:
        """The fixed training tasks θ is evaluated on every ``evaluation_interval``
        iterations (``evaluation_num_tasks`` tasks of the train split, drawn with
        ``evaluation_seed``; the training cost limit)."""
        return self.family.sample_tasks(self.config.evaluation_num_tasks, "train",
                                        seed=self.config.evaluation_seed,
                                        cost_limit=self.config.train_cost_limit)

    def _training_ledger(self, costs: list[list[float]]) -> dict[str, Any]:
        """``{"ledger": {...}}`` when this evaluation and the previous one bracket exactly one
        update of a constrained algorithm without inner loop (CPO: its predicted cost change
        is θ's): the update's predicted change (``outer_predicted_cost_change``, bᵀx times
        the accepted fraction), the change of θ's evaluation cost (paired over the same
        episodes) with its standard error, the CPO case and the KL; else ``{}``."""
        previous, self._last_eval = self._last_eval, {
            "meta_iteration": self._meta_iterations, "costs": costs}
        update = self._last_update
        cfg = self.config.update_config()
        if (not previous or cfg.inner_steps or not cfg.constrained
                or previous["meta_iteration"] != self._meta_iterations - 1
                or update.get("meta_iteration") != self._meta_iterations
                or len(previous["costs"]) != len(costs)):
            return {}
        diffs = [np.asarray(a, float) - np.asarray(b, float)
                 for a, b in zip(costs, previous["costs"])]
        stats = [(d.mean(), d.var(ddof=1) / d.size) for d in diffs if d.size > 1]
        if not stats:
            return {}
        realised = float(np.mean([m for m, _ in stats]))
        se = float(np.sqrt(sum(v for _, v in stats)) / len(stats))
        return {"ledger": {
            "predicted_cost_change": float(update.get("outer_predicted_cost_change", math.nan)),
            "realised_cost_change": realised, "realised_cost_change_se": se,
            "case": float(update.get("outer_case", math.nan)),
            "kl": float(update.get("outer_kl", math.nan)),
            "accepted": float(update.get("line_search_accepted", math.nan))}}

    def evaluate(self, parallel_train_future: Any = None, **_: Any) -> dict[str, Any]:
        """Evaluate θ on :meth:`evaluation_tasks`, ``evaluation_duration`` episodes per task
        (sampled actions, common random numbers as in :meth:`adapt`, seed
        ``evaluation_seed``). In ``algo.train()``'s result under ``evaluation``:
        ``mean_cost`` / ``mean_return`` (means over tasks), ``cost_se`` and ``cost_ucb`` of
        the task-averaged cost (one-sided 95%), ``cost_limit``, ``meets_limit`` (1: the
        task-averaged evaluation cost is within the limit), ``certified`` (1: its upper
        bound is), ``within_limit_rate`` / ``certified_rate`` (fractions of tasks) and
        ``per_task`` lists; for CPO, when the previous iteration was evaluated too,
        ``ledger`` (:meth:`_training_ledger`)."""
        tasks = self.evaluation_tasks()
        theta = self._on_learner(lambda learner: learner.theta_weights())
        start = time.perf_counter()
        plan = EvalPlan(int(self.config.evaluation_duration), int(self.config.evaluation_seed),
                        (False,))
        results = self._run_jobs(plan.jobs(tasks, [theta] * len(tasks), 0, False))
        per_task = [results[i] for i in range(len(tasks))]
        bound = _cost_bound([r.evaluation for r in per_task])
        stats = [cost_stats(r.costs, bound) for r in per_task]
        limits = [float(r.task.cost_limit) for r in per_task]
        pooled = pooled_cost_stats([r.costs for r in per_task], bound)
        limit = float(np.mean(limits))
        out = self._training_ledger([r.costs for r in per_task])
        return {**out,
            "mean_cost": pooled.mean,
            "mean_return": float(np.mean([np.mean(r.returns) for r in per_task])),
            "cost_se": pooled.se, "cost_ucb": pooled.ucb, "cost_limit": limit,
            "meets_limit": float(pooled.within(limit)),
            "certified": float(pooled.certified(limit)),
            "within_limit_rate": float(np.mean([s.within(h) for s, h in zip(stats, limits)])),
            "certified_rate": float(np.mean([s.certified(h) for s, h in zip(stats, limits)])),
            "num_tasks": len(tasks), "episodes_per_task": plan.episodes,
            "env_steps": int(sum(r.num_env_steps for r in per_task)),
            "time_s": time.perf_counter() - start,
            "per_task": {"task_id": [r.task.task_id for r in per_task], "cost_limit": limits,
                         "cost": [s.mean for s in stats], "cost_se": [s.se for s in stats],
                         "cost_ucb": [s.ucb for s in stats],
                         "return": [float(np.mean(r.returns)) for r in per_task]},
        }

    # -- the sampling rounds -------------------------------------------------------------------
    def _run_rounds(self, tasks: Sequence[Task], num_rounds: int,
                    take_round: Callable[[MetaCPOTorchLearner, int, list], RoundOutput],
                    episodes_per_task: Optional[int] = None,
                    evaluation: Optional["EvalPlan"] = None,
                    check_steps: bool = False,
                    first_round_episodes: Optional[int] = None,
                    ) -> tuple[list[list[Optional[dict]]], list[tuple[int, str]],
                               dict[str, float], dict[str, list]]:
        """Sample every task ``num_rounds`` times, each round with the weights the
        Learner returned for the task in the previous round (θ in round 0);
        ``take_round(learner, k, samples)`` hands round k's samples to the Learner
        (``add_round`` in training, ``adapt_round`` in adaptation) and returns its output.

        Returns the Learner's per-task batch summaries of each round (None: task dropped),
        the (EnvRunner index, Ray node id) that sampled each task (last round), the time
        split and ``{"eval": [...], "steps": [...], "weights": [...]}``: per round, the
        evaluation results of each mode of ``evaluation`` (sampled together with the round's
        batches, with the same weights) and the Learner's per-task step records (adaptation
        only); the weights each task was sampled with in the last round (None: dropped).

        With ``check_steps`` (test-time adaptation with ``adaptation_backtracks``) each
        round k > 0 first samples the learning batches alone and lets the Learner check the
        previous round's steps on them (:meth:`_checked_samples`); the evaluation episodes
        are then sampled with the weights that stood, and each step's record carries its
        ``rejections`` (:meth:`_checked_round`). ``first_round_episodes`` (None:
        ``episodes_per_task``) is round 0's learning batch size alone.
        """
        num_eps = episodes_per_task or self.config.episodes_per_task
        times = {"sample_s": 0.0, "learner_s": 0.0, "env_steps": 0}
        extra: dict[str, list] = {"eval": [], "steps": []}
        if evaluation is not None and evaluation.modes:
            times.update(eval_env_steps=0)
        iteration = self._meta_iterations
        theta = self._on_learner(lambda learner: learner.begin(len(tasks), iteration))
        weights: list[Optional[dict]] = [theta] * len(tasks)
        rounds, placements = [], [(-1, "")] * len(tasks)
        modes = () if evaluation is None else evaluation.modes
        for k in range(num_rounds):
            start = time.perf_counter()
            seeds = self._job_seeds(len(tasks))
            checking = check_steps and k > 0
            batch_eps = first_round_episodes if k == 0 and first_round_episodes else num_eps
            with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
                alongside = [] if checking else _evaluation_jobs(evaluation, tasks, weights)
                if alongside:  # learning and evaluation jobs in one wave
                    results = self._run_jobs(
                        _learning_jobs(tasks, weights, batch_eps, seeds) + alongside)
                    samples = [results.get(i) for i in range(len(tasks))]
                else:
                    results = {}
                    samples = self.sample_episodes(tasks, weights, batch_eps, seeds=seeds)
                if checking:
                    samples, weights, results = self._checked_round(
                        tasks, samples, weights, num_eps, evaluation, extra["steps"][-1], times)
                if modes:
                    extra["eval"].append({
                        mode: [results.get((m + 1) * len(tasks) + i) for i in range(len(tasks))]
                        for m, mode in enumerate(modes)})
                    times["eval_env_steps"] += sum(
                        r.num_env_steps for r in results.values() if r.evaluation is not None)
            times["sample_s"] += time.perf_counter() - start
            for i, sample in enumerate(samples):
                if sample is not None:
                    placements[i] = (sample.worker_index, sample.node_id)
                    times["env_steps"] += sample.num_env_steps
            start = time.perf_counter()
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                out = self._on_learner(lambda learner: take_round(learner, k, samples))
            times["learner_s"] += time.perf_counter() - start
            rounds.append(list(out.summaries))
            if self.on_round is not None:
                self.on_round(k, num_rounds)
            if out.steps is not None:
                extra["steps"].append(list(out.steps))
            # A task stays in the next round only if it got (adapted) weights.
            weights = list(out.weights) if k < num_rounds - 1 else weights
        extra["weights"] = weights  # those of the last round
        return rounds, placements, times, extra

    def _checked_round(self, tasks: Sequence[Task], samples: list[Optional[SampleResult]],
                       weights: list[Optional[dict]], num_eps: int,
                       evaluation: Optional["EvalPlan"], records: list[Optional[dict]],
                       times: dict[str, float]
                       ) -> tuple[list[Optional[SampleResult]], list[Optional[dict]],
                                  dict[int, SampleResult]]:
        """The rest of a checked round: the last steps are checked on ``samples``
        (:meth:`_checked_samples`; each record gets its ``rejections``), then the evaluation
        jobs run with the weights that stood, with ``adaptation_backtrack_fresh`` beside a
        fresh learning batch per task (the batches that decided count as env steps spent).
        Returns the learning samples, the weights and the jobs' results."""
        samples, weights, rejections = self._checked_samples(
            tasks, samples, weights, num_eps, records, times)
        for record, count in zip(records, rejections):
            if record is not None:
                record["rejections"] = float(count)
        jobs = _evaluation_jobs(evaluation, tasks, weights)
        fresh = self.config.adaptation_backtrack_fresh
        if fresh:  # learn from episodes the check did not select
            times["env_steps"] += sum(s.num_env_steps for s in samples if s is not None)
            jobs = _learning_jobs(tasks, weights, num_eps, self._job_seeds(len(tasks))) + jobs
        results = self._run_jobs(jobs) if jobs else {}
        if fresh:
            samples = [results.get(i) for i in range(len(tasks))]
        return samples, weights, results

    def _checked_samples(self, tasks: Sequence[Task], samples: list[Optional[SampleResult]],
                         weights: list[Optional[dict]], num_eps: int,
                         records: list[Optional[dict]], times: dict[str, float]
                         ) -> tuple[list[Optional[SampleResult]], list[Optional[dict]],
                                    list[int]]:
        """The Learner checks the last adaptation steps on ``samples`` (learner
        ``check_steps``); every task whose step it rejects is sampled again with the
        weights it returns, and checked again, until every step stands or is undone.
        Returns the samples and weights that stood and the rejections per task;
        ``records`` (the steps' calibration records) take the rejected steps' new ones and
        ``times["env_steps"]`` the env steps of the rejected batches."""
        samples, weights = list(samples), list(weights)
        rejections = [0] * len(tasks)
        while True:
            retry = self._on_learner(lambda learner: learner.check_steps(samples))
            if not retry:
                return samples, weights, rejections
            for i, (task_weights, record) in retry.items():
                weights[i], records[i] = task_weights, record
                rejections[i] += 1
                times["env_steps"] += samples[i].num_env_steps  # spent on a rejected step
            seeds = self._job_seeds(len(retry))
            again = self.sample_episodes([tasks[i] for i in retry],
                                         [weights[i] for i in retry], num_eps, seeds=seeds)
            for i, sample in zip(retry, again):
                samples[i] = sample

    def _job_seeds(self, n: int) -> list[int]:
        """The next ``n`` sampling-job seeds of the algorithm's stream."""
        return [int(x) for x in self._sample_rng.integers(0, 2**31 - 1, size=n)]

    def sample_episodes(self, tasks: Sequence[Task], weights: Sequence[Optional[dict]],
                        num_episodes: int, seeds: Optional[Sequence[int]] = None
                        ) -> list[Optional[SampleResult]]:
        """Sample ``num_episodes`` episodes of each task with its weights (tasks whose
        weights are None are skipped: their entry is None) on the EnvRunners; see
        ``episodes.sample_jobs``.

        Tasks go round-robin to the healthy remote EnvRunners (each runner works through
        its share in one call); with no remote runners the local one does them in turn.
        A runner that fails is restarted by RLlib and its tasks are re-sent (task and
        weights are part of every job) until ``num_consecutive_env_runner_failures_tolerance``
        attempts are used up. ``seeds`` (one per task) seed each job's env resets and action
        noise, so a re-sent job samples the same episodes and a restored checkpoint
        continues the same stream.
        """
        results = self._run_jobs(_learning_jobs(tasks, weights, num_episodes, seeds))
        return [results.get(i) for i in range(len(tasks))]

    def _run_jobs(self, jobs: Sequence[SampleJob]) -> dict[int, SampleResult]:
        """Run sampling jobs (``episodes.sample_jobs``) on the EnvRunners as
        :meth:`sample_episodes` describes. Returns the results by job number; every
        episode of a result is checked to come from the result's task."""
        results: dict[int, SampleResult] = {}
        group = self.env_runner_group
        if group.num_remote_env_runners() == 0:
            out = sample_jobs(self.env_runner, jobs)
            self.metrics.aggregate([out["metrics"]], key=ENV_RUNNER_RESULTS)
            results = {r.job: r for r in out["results"]}
        else:
            attempts = max(1, int(self.config.num_consecutive_env_runner_failures_tolerance) + 1)
            for _ in range(attempts):
                pending = [job for job in jobs if job.job not in results]
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
                results.update({r.job: r for o in outs for r in o["results"]})
                if len(results) < len(jobs):
                    self.restore_env_runners(group)
        missing = [job.task.task_id for job in jobs if job.job not in results]
        if missing:
            raise RuntimeError(f"sampling failed for tasks {missing} after repeated "
                               "EnvRunner failures")
        for result in results.values():
            seen = {t for ids in result.episode_task_ids for t in ids}
            if seen != {result.task.task_id}:
                raise RuntimeError(f"task {result.task.task_id} was sent to EnvRunner "
                                   f"{result.worker_index} but its episodes carry task ids "
                                   f"{sorted(seen)}")
        return results

    def _on_learner(self, call: Callable[[MetaCPOTorchLearner], Any]) -> Any:
        """``call(learner)`` on the (single) Learner; returns its result."""
        results = self.learner_group.foreach_learner(call)
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


def _learning_jobs(tasks: Sequence[Task], weights: Sequence[Optional[dict]], num_episodes: int,
                   seeds: Optional[Sequence[int]]) -> list[SampleJob]:
    """Sampling jobs of learning batches: job i samples task i (tasks without weights are
    left out)."""
    return [SampleJob.learning(i, task, w, num_episodes, None if seeds is None else seeds[i])
            for i, (task, w) in enumerate(zip(tasks, weights)) if w is not None]


def _evaluation_jobs(evaluation: Optional["EvalPlan"], tasks: Sequence[Task],
                     weights: Sequence[Optional[dict]]) -> list[SampleJob]:
    """The evaluation jobs of every mode of ``evaluation`` (none without one): mode m's
    job for task i is numbered (m + 1)·len(tasks) + i."""
    modes = () if evaluation is None else evaluation.modes
    return [job for m, mode in enumerate(modes)
            for job in evaluation.jobs(tasks, weights, (m + 1) * len(tasks), mode)]


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Evaluation episodes per task, the evaluation seed and the action modes to evaluate
    (False: sampled actions, True: the mean action)."""

    episodes: int
    seed: int
    modes: tuple[bool, ...]

    def jobs(self, tasks: Sequence[Task], weights: Sequence[Optional[dict]], first: int,
             deterministic: bool) -> list[SampleJob]:
        """Evaluation jobs numbered from ``first`` (job ``first + i``: task i)."""
        return [SampleJob.evaluating(first + i, task, w, self.episodes, self.seed,
                                     deterministic)
                for i, (task, w) in enumerate(zip(tasks, weights)) if w is not None]


def task_evaluation(results: Sequence[Optional[SampleResult]], limit: float
                    ) -> dict[str, Any]:
    """One task's evaluation over the adaptation steps (one evaluation result or None per
    step)."""
    bound = _cost_bound([r.evaluation for r in results if r is not None])
    stats = [cost_stats(r.costs if r else [], bound) for r in results]
    ret = [float(np.mean(r.returns)) if r else math.nan for r in results]
    return {"return": ret, "cost": [s.mean for s in stats], "cost_se": [s.se for s in stats],
            "cost_ucb": [s.ucb for s in stats],
            "within_limit": [s.within(limit) if s.n else None for s in stats],
            "certified": [s.certified(limit) if s.n else None for s in stats],
            "num_episodes": [s.n for s in stats], "cost_bound": bound,
            "episode_cost": [r.costs if r else [] for r in results],
            "episode_return": [r.returns if r else [] for r in results]}


def ledger(evaluation: Mapping[str, Any], records: Sequence[Optional[dict]],
           batch_cost: Sequence[float]) -> list[dict[str, float]]:
    """A task's calibration ledger: per adaptation step s (θ_s → θ_{s+1}) the step's record
    (``learner.step_record``) with the realised change of the evaluation mean cost (paired
    over the common-random-number episodes, with its standard error) and of the batch
    cost."""
    out = []
    for s, record in enumerate(records):
        if record is None:
            continue
        before, after = evaluation["episode_cost"][s], evaluation["episode_cost"][s + 1]
        diff = np.asarray(after, float) - np.asarray(before, float) \
            if len(before) == len(after) and before else np.array([])
        out.append({"step": s, **record,
                    "realised_cost_change": float(diff.mean()) if diff.size else math.nan,
                    "realised_cost_change_se": float(diff.std(ddof=1) / math.sqrt(diff.size))
                    if diff.size > 1 else math.nan,
                    "batch_cost_change": float(batch_cost[s + 1] - batch_cost[s])})
    return out


def evaluation_means(per_task: Sequence[Mapping[str, Any]], num_steps: int, episodes: int,
                     seed: int, deterministic: bool) -> dict[str, Any]:
    """Means over tasks per step of a report's evaluation figures (tasks without data left
    out): return, cost, upper bound, and the fractions of tasks within the limit (mean ≤ h)
    and certified (upper bound ≤ h)."""
    def mean(key: str, s: int) -> float:
        values = [float(t[key][s]) for t in per_task
                  if t[key][s] is not None and not math.isnan(float(t["cost"][s]))]
        return float(np.mean(values)) if values else math.nan

    return {"mean_return": [mean("return", s) for s in range(num_steps)],
            "mean_cost": [mean("cost", s) for s in range(num_steps)],
            "mean_cost_ucb": [mean("cost_ucb", s) for s in range(num_steps)],
            "within_limit_rate": [mean("within_limit", s) for s in range(num_steps)],
            "certified_rate": [mean("certified", s) for s in range(num_steps)],
            "episodes_per_task": episodes, "seed": seed, "deterministic": deterministic,
            "confidence": CONFIDENCE}


def _get(summary: Optional[dict], key: str) -> float:
    return math.nan if summary is None else float(summary[key])


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value
