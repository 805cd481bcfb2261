"""Tune / RLlib callbacks: test-time adaptation at a trial's last iteration, and MLflow logging."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback

from metacpo_rllib.experiments import tracking
from metacpo_rllib.experiments.spec import ALGORITHM_NAMES, Adaptation, config_class


@dataclasses.dataclass(frozen=True)
class AdaptAtEnd:
    """RLlib ``on_train_result`` callable: at training iteration ``iteration``, adapt the
    policy to held-out tasks (``adaptation.split``) and add ``result["adaptation"]``: the
    final step's learning-batch ``return_mean`` / ``cost_mean`` / ``violation_rate`` and
    evaluation ``eval_*`` figures (for Tune's result tables and
    ``get_best_result``) and the whole ``algo.adapt`` report as JSON under ``report``
    (a string, which Tune's CSV / TensorBoard loggers store or skip without complaint)."""

    iteration: int
    adaptation: Adaptation

    def __call__(self, *, algorithm: Any, result: dict, **_: Any) -> None:
        a = self.adaptation
        if result.get("training_iteration") != self.iteration or a.test_tasks < 1:
            return
        tasks = algorithm.family.sample_tasks(a.test_tasks, a.split, seed=a.task_seed,
                                              cost_limit=a.cost_limit)
        report = algorithm.adapt(tasks, steps=a.adapt_steps,
                                 episodes_per_task=a.episodes_per_task,
                                 eval_episodes=a.eval_episodes)
        result["adaptation"] = {"return_mean": report["mean_return"][-1],
                                "cost_mean": report["mean_cost"][-1],
                                "violation_rate": report["violation_rate"][-1],
                                "report": json.dumps(report, default=tracking.plain)}
        if "eval" in report:  # the evaluation episodes' figures at the last step
            ev = report["eval"]
            result["adaptation"].update(
                eval_return_mean=ev["mean_return"][-1], eval_cost_mean=ev["mean_cost"][-1],
                eval_within_limit_rate=ev["within_limit_rate"][-1],
                eval_certified_rate=ev["certified_rate"][-1])


def adaptation_report(result: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The ``algo.adapt`` report AdaptAtEnd put into a result (None if there is none)."""
    entry = result.get("adaptation")
    if isinstance(entry, Mapping) and isinstance(entry.get("report"), str):
        return json.loads(entry["report"])
    return None


def trial_algo_config(trial: Any) -> Optional[Any]:
    """The AlgorithmConfig a Meta-CPO-family trial runs with (a sweep's SweepAlgorithm
    trial or a registered name's; None for other trainables)."""
    from metacpo_rllib.experiments.trainable import ALGORITHM_KEY, algorithm_config

    if ALGORITHM_KEY in (trial.config or {}):
        return algorithm_config(trial.config)
    if trial.trainable_name not in ALGORITHM_NAMES:
        return None
    return config_class(trial.trainable_name)().update_from_dict(dict(trial.config))


class MetaCPOMLflowCallback(MLflowLoggerCallback):
    """Ray's MLflowLoggerCallback, adapted: compact params (the training fields, not the
    whole AlgorithmConfig dict), tags (algorithm, family, seed, git commit), the
    per-iteration metrics that ``train`` logs (one batch per iteration), the adaptation
    report, the run plot and the final checkpoint as artifacts, and (``log_model``) the
    final checkpoint's policy as an MLflow model ``policy`` (pyfunc, ``experiments.models``).
    Runs on the driver; a store that is unreachable or fails gives one TrackingWarning and
    the sweep goes on.
    """

    def __init__(self, tracking_uri: Optional[str] = None, *, experiment_name: str,
                 tags: Optional[Mapping[str, str]] = None,
                 params: Optional[Mapping[str, Any]] = None,
                 log_checkpoint: bool = True, kind: str = "sweep",
                 guard: Optional[tracking.Guard] = None, log_model: bool = True) -> None:
        uri = tracking.resolve_tracking_uri(tracking_uri)
        super().__init__(tracking_uri=uri, experiment_name=experiment_name,
                         tags=dict(tags or {}))
        self.params = dict(params or {})
        self.log_checkpoint = log_checkpoint
        self.log_model = log_model
        self.kind = kind
        self.guard = guard or tracking.Guard(uri)
        self._recorders: dict[Any, tracking.RunRecorder] = {}
        self._checkpoints: dict[Any, str] = {}

    def setup(self, *args: Any, **kwargs: Any) -> None:
        reason = None if self.guard.disabled else tracking.check_reachable(self.tracking_uri)
        if reason:
            self.guard.disable(reason)
        self.guard.call(self._setup)

    def _setup(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        tracking.ensure_experiment(self.client, self.experiment_name, self.tracking_uri)
        super().setup()  # finds the experiment, sets self._trial_runs

    def log_trial_start(self, trial: Any) -> None:
        self.guard.call(self._start, trial)

    def _start(self, trial: Any) -> None:
        if trial in self._recorders:  # a restarted trial keeps its run
            return
        config = trial_algo_config(trial)
        tags = {**self.tags, "trial_name": str(trial)}
        if config is not None:
            tags.update(tracking.run_tags(config, self.kind))
            params = tracking.training_params(config)
        else:
            params = {k: v for k, v in trial.config.items() if not isinstance(v, Mapping)}
        from metacpo_rllib.experiments.trainable import trial_run_name

        run = self.mlflow_util.start_run(tags=tags, run_name=trial_run_name(trial))
        self._trial_runs[trial] = run.info.run_id
        recorder = tracking.RunRecorder(self.client, run.info.run_id, self.guard)
        recorder.log_params({**params, **self.params})
        self._recorders[trial] = recorder

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        recorder = self._recorders.get(trial)
        if recorder is not None:
            self.guard.call(recorder.log_result, result)
            report = adaptation_report(result)
            if report is not None:
                self.guard.call(recorder.log_adaptation, report)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        self._checkpoints[trial] = checkpoint.path

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        recorder = self._recorders.pop(trial, None)
        if recorder is None:
            return
        path = self._checkpoints.pop(trial, None)
        if path is None and getattr(trial, "checkpoint", None) is not None:
            path = trial.checkpoint.path
        if path:
            self.guard.call(recorder.log_checkpoint, path, self.log_checkpoint)
        if path and self.log_model and not failed and Path(path).is_dir() \
                and trial_algo_config(trial) is not None:
            recorder.log_policy(path, "policy")
        self.guard.call(recorder.finish, "FAILED" if failed else "FINISHED")
