"""MLflow tracking for train, sweep and compare: store defaults, params, metrics, artifacts."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from metacpo_rllib import console
from metacpo_rllib.cli_support import adaptation_table
from metacpo_rllib.provenance import git_commit  # noqa: F401 (tags; re-exported)

#: The embedded default store: a sqlite file in the working directory (no server needed).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Artifacts of a sqlite store go to this folder next to the database file.
ARTIFACT_DIR = "mlruns"
#: Result keys logged as metrics besides everything under ``metacpo/``.
EXTRA_METRICS = ("time_this_iter_s", "time_total_s", "num_env_steps_sampled_lifetime",
                 "env_runners/episode_return_mean", "env_runners/episode_len_mean")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per log_batch
#: Where a run's metrics that never reached the server are written at the end.
UNSENT_FILE = "mlflow-unsent-{run_id}.json"

logger = logging.getLogger(__name__)


class TrackingWarning(UserWarning):
    """MLflow tracking was turned off (e.g. unreachable server); training goes on."""


# -- the store --------------------------------------------------------------------------------
def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Explicit artifact location of a new experiment on a sqlite store
    (``<db folder>/mlruns/<experiment>``); None elsewhere (the server decides)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).resolve()
    return (db.parent / ARTIFACT_DIR / slug(experiment)).as_uri()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "default"


def check_reachable(uri: str, timeout: float = 3.0) -> Optional[str]:
    """Why an http(s) tracking server cannot be reached (None: reachable or not http)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as err:
        return f"cannot reach {uri} ({getattr(err, 'reason', err)})"


#: Experiment tags: the kind "custom_model_development" ("Machine learning" in MLflow 3's UI)
#: opens the experiment on its runs rather than the empty GenAI pages (MLflow 3.17's UI
#: also follows its browser's GenAI / Model training switch; ``?workflowType=machine_learning``
#: in the link picks the latter).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with its artifact location) if missing;
    tagged with ``EXPERIMENT_TAGS`` either way."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(uri, name),
                                        tags=EXPERIMENT_TAGS)
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


class Guard:
    """Runs tracking calls so that tracking problems never stop training, with ONE
    TrackingWarning per guard whatever happens.

    ``call``: the first failure turns every later call into a no-op (``disabled``; used
    before a run exists). ``send``: a resumable call for a run that exists: while the
    server cannot be reached the call is skipped and ``send`` returns False (the guard is
    ``offline``); once it answers again calls go through again (the caller keeps what it
    could not send, e.g. RunRecorder's metrics, and sends it then).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.disabled = False
        self.offline = False
        self.warned = False

    def _warn(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(message, TrackingWarning, stacklevel=4)

    def disable(self, reason: Any) -> None:
        if not self.disabled:
            self.disabled = True
            self._warn(f"MLflow tracking to {self.uri} is off for this run: {reason}; "
                       "training continues without it")

    def send(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Call ``fn`` if the store answers; True if it ran without error."""
        if self.disabled:
            return False
        reason = check_reachable(self.uri, timeout=2.0)  # (None for non-http stores)
        if reason is None:
            try:
                with console.deferred_interrupts():
                    fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 (any tracking failure)
                reason = f"{type(err).__name__}: {err}"
            else:
                if self.offline:
                    self.offline = False
                    logger.info("MLflow tracking to %s resumed", self.uri)
                return True
        if not self.offline:
            self.offline = True
            self._warn(f"MLflow tracking to {self.uri} failed: {reason}; training "
                       "continues, metrics are kept and sent when the server is back")
        return False

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            return None
        try:
            with console.deferred_interrupts():
                return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (any tracking failure)
            self.disable(f"{type(err).__name__}: {err}")
            return None


# -- what is logged ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def training_params(config: Any) -> dict[str, str]:
    """Compact params of an AlgorithmConfig: the family, its overrides and the training
    fields (not the whole AlgorithmConfig dict)."""
    from metacpo_rllib.experiments.spec import setter_fields
    from metacpo_rllib.rllib import MetaCPOConfig

    params: dict[str, Any] = {"family": config.env, "env_config": dict(config.env_config or {}),
                              "num_env_runners": config.num_env_runners,
                              "gamma": config.gamma}
    for field in sorted(setter_fields(MetaCPOConfig.training)):
        params[field] = getattr(config, field, None)
    del params["cost_limit"]  # the deprecated name of train_cost_limit
    # train_cost_limit None means the family's: logged as the limit used instead
    params.update(cost_limits(config))
    return {k: _param(v) for k, v in params.items()}


def cost_limits(config: Any, test_limit: Optional[float] = None,
                split: str = "test") -> dict[str, Optional[float]]:
    """The limits a config's run uses: ``train_cost_limit`` (the config's, else the
    family's train limit) and ``test_cost_limit`` (``test_limit``, else the family's limit
    of the held-out ``split``); None where the family cannot be built."""
    try:
        family = config.make_family()
    except Exception:  # noqa: BLE001 (an invalid config: validate() names the problem)
        family = None
    train = config.train_cost_limit if config.train_cost_limit is not None else (
        family and family.cost_limit_of("train"))
    test = test_limit if test_limit is not None else (family and family.cost_limit_of(split))
    return {"train_cost_limit": None if train is None else float(train),
            "test_cost_limit": None if test is None else float(test)}


def run_name_for(algorithm: str, family: Any, seed: Any) -> str:
    """``<Algorithm>-<family>-seed<N>``: the name of a training run and of a trial's run."""
    return f"{algorithm}-{family}-seed{seed}"


def _param(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text[:MAX_PARAM_LENGTH]


def run_tags(config: Any, kind: str, extra: Optional[Mapping[str, str]] = None
             ) -> dict[str, str]:
    """Tags of a run: algorithm, family, seed, git commit, kind (train / sweep / compare)."""
    commit = git_commit()
    tags = {"algorithm": config.algo_class.__name__, "family": str(config.env),
            "seed": str(config.seed), "git_commit": commit,
            "mlflow.source.git.commit": commit, "kind": kind}
    return {**tags, **(extra or {})}


def metric_key(key: str) -> str:
    """A flattened result key as a valid MLflow metric name."""
    key = re.sub(r"[^\w.\- /]", "_", key)
    return re.sub(r"/+", "/", key).strip("/")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(``a/b/c``, value) for every leaf of a nested dict (RLlib's "/" convention)."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The per-iteration metrics of a result: every scalar under ``metacpo/`` and (in the
    iterations that evaluate θ, ``evaluation_interval``) under ``evaluation/``, plus a few
    RLlib / Tune counters. Same names for all four algorithms."""
    out = {}
    for key, value in flatten({k: v for k, v in result.items() if k != "adaptation"}):
        if not (key.startswith(("metacpo/", "evaluation/")) or key in EXTRA_METRICS):
            continue
        number = _scalar(value)
        if number is not None:
            out[metric_key(key)] = number
    return out


def _scalar(value: Any) -> Optional[float]:
    """``value`` as a float if it is a plain number (ints, floats, numpy scalars)."""
    if isinstance(value, (bool, str, bytes)) or hasattr(value, "__len__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def history_row(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers the run plot needs from one training result."""
    m = result.get("metacpo", {})
    row = {"iteration": float(result.get("training_iteration", math.nan))}
    for key in ("pre_return_mean", "post_return_mean", "pre_cost_mean", "post_cost_mean",
                "cost_limit_mean"):
        row[key] = float(m.get(key, math.nan))
    return row


# -- one run ------------------------------------------------------------------------------------
class RunRecorder:
    """Logs one training run to an existing MLflow run: per-iteration metrics, the
    adaptation report, the checkpoint and, at the end, the run plot."""

    def __init__(self, client: Any, run_id: str, guard: Guard) -> None:
        self.client, self.run_id, self.guard = client, run_id, guard
        self.history: list[dict[str, float]] = []
        self.report: Optional[dict[str, Any]] = None
        self.pending: list[Any] = []  # metrics not yet accepted by the store
        self.unsent_path: Optional[Path] = None
        self.finished = False
        if run_id:
            _OPEN_RECORDERS[id(self)] = self

    def _send(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """A resumable tracking call of this run (skipped if there is no run)."""
        return bool(self.run_id) and self.guard.send(fn, *args, **kwargs)

    def _log_metrics(self, metrics: list[Any]) -> None:
        """Queue ``metrics`` and send everything queued while the store answers."""
        if not self.run_id:
            return
        self.pending.extend(metrics)
        while self.pending:
            chunk = self.pending[:MAX_METRICS_PER_BATCH]
            if not self._send(self.client.log_batch, self.run_id, metrics=chunk):
                return
            del self.pending[:len(chunk)]

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow: 100 params per batch
            self._send(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        """Final figures of the run as metrics at step 0."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log_metrics([Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items()])

    def log_result(self, result: Mapping[str, Any]) -> None:
        """One ``algo.train()`` / Tune result: its metrics at step = training iteration."""
        from mlflow.entities import Metric

        self.history.append(history_row(result))
        step = int(result.get("training_iteration", len(self.history)))
        now = int(time.time() * 1000)
        self._log_metrics([Metric(k, v, now, step) for k, v in result_metrics(result).items()])

    def log_adaptation(self, report: Mapping[str, Any]) -> None:
        """An ``algo.adapt`` report: ``test/*`` metrics per adaptation step (the metric's
        step is the adaptation step; learning-batch figures as ``test/return_mean`` etc.,
        evaluation-episode figures as ``test/eval_*``), the table and the raw report as
        artifacts."""
        from mlflow.entities import Metric


        self.report = dict(report)
        now = int(time.time() * 1000)
        metrics = []
        for name, key in (("return_mean", "mean_return"), ("cost_mean", "mean_cost"),
                          ("violation_rate", "violation_rate")):
            for step, value in zip(report["steps"], report[key]):
                metrics.append(Metric(f"test/{name}", float(value), now, int(step)))
        for name, key in (("eval_return_mean", "mean_return"), ("eval_cost_mean", "mean_cost"),
                          ("eval_cost_ucb_mean", "mean_cost_ucb"),
                          ("eval_within_limit_rate", "within_limit_rate"),
                          ("eval_certified_rate", "certified_rate")):
            for step, value in zip(report["steps"], report.get("eval", {}).get(key, [])):
                metrics.append(Metric(f"test/{name}", float(value), now, int(step)))
        limits = [t["cost_limit"] for t in report["tasks"]]
        metrics.append(Metric("test/cost_limit_mean", float(sum(limits) / len(limits)), now, 0))
        self._log_metrics(metrics)
        self._send(self.client.log_text, self.run_id, adaptation_table(report),
                   "adaptation/table.txt")
        self._send(self.client.log_text, self.run_id,
                   json.dumps(report, indent=2, default=plain), "adaptation/report.json")

    def log_checkpoint(self, path: str, upload: bool = True) -> None:
        """Tag the checkpoint path; with ``upload`` also copy it under ``checkpoint/``."""
        self._send(self.client.set_tag, self.run_id, "checkpoint_path", str(path))
        if upload and Path(path).is_dir():
            self._send(self.client.log_artifacts, self.run_id, str(path), "checkpoint")

    def log_policy(self, policy_dir: str, name: str = "policy",
                   registered_model_name: Optional[str] = None,
                   tags: Optional[Mapping[str, str]] = None) -> Optional[Any]:
        """Log a saved policy folder as an MLflow model ``name`` of this run (pyfunc flavour
        and signature, ``experiments.models``); with ``registered_model_name`` also as a new
        version of that registered model. Returns MLflow's ModelInfo (None: not logged)."""
        from metacpo_rllib.experiments.models import log_policy_model

        logged: list[Any] = []
        self._send(lambda: logged.append(log_policy_model(
            policy_dir, tracking_uri=self.guard.uri, run_id=self.run_id, name=name,
            registered_model_name=registered_model_name, tags=tags)))
        return logged[0] if logged else None

    def finish(self, status: str = "FINISHED") -> None:
        """Send queued metrics, log the run plot (training curves and adaptation) and close
        the run. Metrics the store never took are written to ``UNSENT_FILE`` (JSON) in the
        working directory."""
        self.finished = True
        _OPEN_RECORDERS.pop(id(self), None)
        self._log_metrics([])
        if self.history or self.report:
            self._send(self._log_plot)
        self._send(self.client.set_terminated, self.run_id, status)
        if self.pending:
            self.unsent_path = Path(UNSENT_FILE.format(run_id=self.run_id)).resolve()
            rows = [{"key": m.key, "value": m.value, "timestamp": m.timestamp,
                     "step": m.step} for m in self.pending]
            self.unsent_path.write_text(json.dumps({"tracking_uri": self.guard.uri,
                                                    "run_id": self.run_id,
                                                    "metrics": rows}))
            logger.warning("MLflow server %s did not come back: %d metrics of run %s kept "
                           "in %s", self.guard.uri, len(rows), self.run_id, self.unsent_path)

    def _log_plot(self) -> None:
        from metacpo_rllib.experiments.plots import run_figure

        with tempfile.TemporaryDirectory(prefix="metacpo-plot-") as tmp:
            path = Path(tmp) / "curves.png"
            run_figure(self.history, self.report, path)
            self.client.log_artifact(self.run_id, str(path), "plots")


#: Recorders whose run is still open in this process (``end_open_runs`` closes them).
#: Weak: a recorder dropped without ``finish`` (e.g. a comparison's parent, closed with
#: ``set_terminated``) leaves with it; on an interrupt the traceback keeps it alive.
_OPEN_RECORDERS: "weakref.WeakValueDictionary[int, RunRecorder]" = weakref.WeakValueDictionary()


def end_open_runs(status: str = "KILLED") -> list[str]:
    """Close every run this process opened and has not finished (e.g. a comparison's
    parent and trial runs when the command is interrupted) with ``status``, even one
    already marked FAILED by a ``finally`` block on the way out. Returns their run ids."""
    ended = []
    for key, recorder in list(_OPEN_RECORDERS.items()):
        _OPEN_RECORDERS.pop(key, None)
        recorder.finished = True
        recorder.guard.call(recorder.client.set_terminated, recorder.run_id, status)
        if not recorder.guard.disabled:
            ended.append(recorder.run_id)
    return ended


def plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and the like."""
    return value.item() if hasattr(value, "item") else str(value)


# -- the helper for ``metacpo train`` --------------------------------------------------------------
@contextlib.contextmanager
def log_training_run(config: Any, *, tracking_uri: Optional[str] = None,
                     experiment: Optional[str] = None, run_name: Optional[str] = None,
                     params: Optional[Mapping[str, Any]] = None,
                     tags: Optional[Mapping[str, str]] = None,
                     kind: str = "train") -> Iterator[RunRecorder]:
    """Track one training run of ``config`` in MLflow.

    Opens a run (experiment default ``train-<family>``) with compact params and tags, yields
    a RunRecorder (``log_result(algo.train() result)``, ``log_adaptation(report)``,
    ``log_checkpoint(path)``), and on exit logs the run plot and closes the run (FAILED if
    the block raised). An unreachable or failing store gives one TrackingWarning; the block
    runs all the same. An interrupted block (Ctrl-C, SIGTERM) closes the run as KILLED.
    """
    name = run_name or run_name_for(config.algo_class.__name__, config.env, config.seed)
    with tracked_run(experiment or f"{kind}-{config.env}", name,
                     tags=run_tags(config, kind, tags),
                     params={**training_params(config), **(params or {})},
                     tracking_uri=tracking_uri) as recorder:
        yield recorder


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str, *, tags: Mapping[str, str],
                params: Mapping[str, Any], tracking_uri: Optional[str] = None
                ) -> Iterator[RunRecorder]:
    """One MLflow run in ``experiment`` (created if needed), as a RunRecorder with
    ``params`` logged: FINISHED after the block, FAILED if it raised, KILLED if it was
    interrupted (Ctrl-C, SIGTERM). An unreachable or failing store gives one
    TrackingWarning; the block runs all the same."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    guard = Guard(uri)
    reason = check_reachable(uri)
    if reason:
        guard.disable(reason)
    client = MlflowClient(tracking_uri=uri)

    def start() -> str:
        experiment_id = ensure_experiment(client, experiment, uri)
        return client.create_run(experiment_id, run_name=run_name,
                                 tags=dict(tags)).info.run_id

    recorder = RunRecorder(client, guard.call(start) or "", guard)
    recorder.log_params(dict(params))
    try:
        yield recorder
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through console.Terminated
        recorder.finish("KILLED")
        raise
    except BaseException:
        recorder.finish("FAILED")
        raise
    recorder.finish("FINISHED")
