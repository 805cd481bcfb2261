"""``metacpo eval``: a trained or adapted policy on tasks, N episodes each, without Ray.

The policy comes from :func:`metacpo_rllib.load_policy` (an algorithm checkpoint of
``metacpo train --checkpoint-dir`` or a saved policy folder); its family and family
settings are read from an algorithm checkpoint's config (Ray-free), or given with
``--family``. Episodes are rolled out with :func:`metacpo_rllib.rollout.rollout` on the
family's env, seeded as the algorithm's evaluation episodes are
(:func:`~metacpo_rllib.rollout.evaluation_seed`: the same ``--seed`` gives the same env
seeds and action noise as ``adapt``'s evaluation with that seed). Per task: mean return,
mean episode cost with its standard error and one-sided 95% upper bound
(:mod:`metacpo_rllib.evaluation_stats`), within the limit (mean ≤ h) and certified
(bound ≤ h). ``--video DIR`` records episodes with MuJoCo's offscreen renderer.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from metacpo_rllib import console
from metacpo_rllib.cli_support import (SAFETY_FAMILIES, UsageError, abs_path, check_writable_dir,
                                       check_writable_file, count, json_object, number,
                                       write_json)

#: How far above a policy folder an algorithm checkpoint's root may lie
#: (``learner_group/learner/rl_module/default_policy``).
_CHECKPOINT_DEPTH = 4
VIDEO_CAMERAS = ("fixedfar", "fixednear", "track", "vision")
VIDEO_FPS = 30  # safety-gymnasium's render_fps
DEFAULT_TASKS = 2


# -- where the policy comes from --------------------------------------------------------------
#: The manifest ``metacpo adapt --save DIR`` writes beside the saved policy folders.
MANIFEST = "policies.json"


@dataclasses.dataclass(frozen=True)
class Origin:
    """What is known about a policy folder besides its weights: the family it acts in, the
    family's settings and (for an adapted policy) the task it was adapted to."""

    family: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    task: Optional[dict[str, Any]] = None
    where: str = ""  # the manifest it was read from (none: the checkpoint)


def policy_origin(path: str) -> Optional[Origin]:
    """The :class:`Origin` of a policy folder (Ray-free): from the algorithm checkpoint at
    ``path`` or above it, else from the ``policies.json`` of an ``adapt --save`` folder
    (``path`` or its parent); None if neither names a family."""
    found = checkpoint_family(path)
    if found is not None:
        return Origin(*found)
    folder = Path(path).resolve()
    for manifest in (folder / MANIFEST, folder.parent / MANIFEST):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, Mapping) or not isinstance(data.get("family"), str):
            continue
        entries = [e for e in data.get("policies") or [] if isinstance(e, Mapping)]
        task = next((e.get("task") for e in entries if manifest.parent / str(
            e.get("folder")) == folder and isinstance(e.get("task"), Mapping)), None)
        return Origin(data["family"], task=task, where=str(manifest))
    return None


def checkpoint_family(path: str) -> Optional[tuple[str, dict[str, Any]]]:
    """(family name, family overrides) of the algorithm checkpoint at ``path`` or above it
    (a policy folder inside one), read without Ray; None if there is none."""
    from metacpo_rllib.policy import _RayFreeUnpickler

    folder = Path(path).resolve()
    for candidate in [folder, *folder.parents][:_CHECKPOINT_DEPTH + 1]:
        ctor = candidate / "class_and_ctor_args.pkl"
        if not (candidate / "rllib_checkpoint.json").is_file() or not ctor.is_file():
            continue
        try:
            with open(ctor, "rb") as f:
                args = _RayFreeUnpickler(f).load()["ctor_args_and_kwargs"][0]
        except Exception:  # noqa: BLE001 (not an algorithm's constructor: look further up)
            continue
        config = args[0] if args and isinstance(args[0], Mapping) else None
        if config and isinstance(config.get("env"), str):
            # env_config carries the family's constructor overrides (num_envs is RLlib's)
            overrides = {k: v for k, v in dict(config.get("env_config") or {}).items()
                         if k != "num_envs"}
            return config["env"], overrides
    return None


# -- tasks -------------------------------------------------------------------------------------
def given_tasks(family: Any, specs: Sequence[Mapping[str, Any]], split: str,
                cost_limit: Optional[float]) -> list[Any]:
    """Tasks from ``--task`` JSON objects: a task dict (``{"params": {...}, "cost_limit":
    h}``) or just its layout parameters; ``cost_limit`` (if given) overrides every limit.
    Raises ValueError naming the task."""
    from metacpo_rllib.envs import Task

    tasks = []
    for i, spec in enumerate(specs):
        params = spec["params"] if isinstance(spec.get("params"), Mapping) else spec
        limit = spec.get("cost_limit") if "params" in spec else None
        limit = cost_limit if cost_limit is not None else (
            family.cost_limit_of(split) if limit is None else limit)
        try:
            tasks.append(family.validate_task(Task(family.name, dict(params), limit,
                                                   task_id=i, split=split)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"task {i + 1} ({json.dumps(dict(spec))}): {err}") from None
    return tasks


# -- rollouts ---------------------------------------------------------------------------------
def policy_fn(policy: Any) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The (mean, log_std) function of a loaded policy (its numpy copy when possible)."""
    from metacpo_rllib.rollout import numpy_policy

    return numpy_policy(policy.net) or policy.distribution


def evaluate_task(policy: Any, family: Any, task: Any, episodes: int, seed: int = 0,
                  deterministic: bool = False, on_episode: Optional[Callable[[int], None]]
                  = None, video: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``episodes`` episodes of ``policy`` on ``task``: per-episode return / cost / length
    and the task's statistics. ``video`` (``dir``, ``episodes``, ``camera``, ``size``,
    ``fps``) records the first episodes into ``dir`` (their files under ``videos``)."""
    from metacpo_rllib.evaluation_stats import cost_stats, episode_cost_bound
    from metacpo_rllib.rollout import evaluation_seed, evaluation_summary, rollout

    videos: list[str] = []
    env = _task_env(family, task, video, videos)
    space = env.action_space
    job_seed = evaluation_seed(seed, task.to_dict())
    try:
        data, task_ids, _ = rollout([env], policy_fn(policy), episodes, job_seed,
                                    space.low.astype(np.float32),
                                    space.high.astype(np.float32),
                                    deterministic=deterministic, on_episode=on_episode)
    finally:
        env.close()
    if {t for ids in task_ids for t in ids} != {task.task_id}:
        raise RuntimeError(f"episodes of task {task.task_id} carry task ids {task_ids}")
    summary = evaluation_summary(data, job_seed, episodes)
    bound = episode_cost_bound([summary])
    stats = cost_stats(summary["costs"], bound)
    returns = np.asarray(summary["returns"], dtype=np.float64)
    return {"task": task.to_dict(), "task_id": task.task_id, "cost_limit": task.cost_limit,
            "return": float(returns.mean()),
            "return_se": float(returns.std(ddof=1) / math.sqrt(len(returns)))
            if len(returns) > 1 else math.nan,
            "cost": stats.mean, "cost_se": stats.se, "cost_ucb": stats.ucb,
            "cost_bound": bound, "within_limit": stats.within(task.cost_limit),
            "certified": stats.certified(task.cost_limit), "num_episodes": stats.n,
            "episode_return": summary["returns"], "episode_cost": summary["costs"],
            "episode_length": summary["lengths"], "videos": videos}


def _task_env(family: Any, task: Any, video: Optional[Mapping[str, Any]],
              videos: list[str]) -> Any:
    """An env of ``task``; with ``video``, one that records its first episodes (the files
    written are appended to ``videos``)."""
    if not video:
        return family.make_env(task)
    from metacpo_rllib.render import EpisodeRecorder, write_video

    size = int(video["size"])
    env = family.make_env(task, render_mode="rgb_array", width=size, height=size,
                          camera_name=video["camera"])

    def save(index: int, frames: list) -> None:
        stem = Path(video["dir"]) / f"{family.name}-task{task.task_id}-episode{index}"
        videos.append(str(write_video(frames, stem, fps=int(video["fps"]))))

    return EpisodeRecorder(env, int(video["episodes"]), save)


def evaluate(policy: Any, family: Any, tasks: Sequence[Any], episodes: int = 20,
             seed: int = 0, deterministic: bool = False,
             video: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Evaluate ``policy`` on each of ``tasks`` (see :func:`evaluate_task`), with a
    progress bar over all episodes; the report has the per-task entries under ``tasks``
    and their means / rates."""
    start = time.perf_counter()
    per_task = []
    with console.progress(len(tasks) * episodes, "eval", "episode") as bar:
        for task in tasks:
            per_task.append(evaluate_task(policy, family, task, episodes, seed, deterministic,
                                          on_episode=lambda _: bar.update(1), video=video))

    def mean(key: str) -> float:
        return float(np.mean([float(t[key]) for t in per_task]))

    return {"family": family.name, "episodes_per_task": episodes, "seed": seed,
            "deterministic": deterministic, "tasks": per_task,
            "mean_return": mean("return"), "mean_cost": mean("cost"),
            "mean_cost_ucb": mean("cost_ucb"), "within_limit_rate": mean("within_limit"),
            "certified_rate": mean("certified"),
            "videos": [v for t in per_task for v in t["videos"]],
            "time_s": time.perf_counter() - start}


def evaluation_report_table(report: Mapping[str, Any]) -> str:
    """Per task: limit, mean return, mean cost, its 95% upper bound, within the limit
    (mean ≤ h) and certified (bound ≤ h); then the means and rates over tasks."""
    def num(value: float, width: int) -> str:
        return f"{'nan':>{width}}" if math.isnan(value) else f"{value:>{width}.2f}"

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = [f"{'task':>9} {'limit':>6} {'return':>9} {'cost':>8} {'cost UCB':>9} "
             f"{'within':>7} {'certified':>9}"]
    for t in report["tasks"]:
        lines.append(f"{t['task_id']:>9} {t['cost_limit']:>6.1f} {num(t['return'], 9)} "
                     f"{num(t['cost'], 8)} {num(t['cost_ucb'], 9)} "
                     f"{yes(t['within_limit']):>7} {yes(t['certified']):>9}")
    lines.append(f"{'mean':>9} {'':>6} {num(report['mean_return'], 9)} "
                 f"{num(report['mean_cost'], 8)} {num(report['mean_cost_ucb'], 9)} "
                 f"{report['within_limit_rate']:>7.2f} {report['certified_rate']:>9.2f}")
    return "\n".join(lines)


# -- MLflow ------------------------------------------------------------------------------------
def log_evaluation(recorder: Any, report: Mapping[str, Any], table: str) -> None:
    """The evaluation as MLflow metrics (``eval/*``: per task at step = the task's
    position, and the means / rates), the table and report as text, the videos as
    artifacts under ``videos/``."""
    from mlflow.entities import Metric

    from metacpo_rllib.experiments.tracking import plain

    now = int(time.time() * 1000)
    metrics = []
    for step, t in enumerate(report["tasks"]):
        for name, key in (("return_mean", "return"), ("cost_mean", "cost"),
                          ("cost_ucb", "cost_ucb"), ("cost_limit", "cost_limit"),
                          ("within_limit", "within_limit"), ("certified", "certified")):
            metrics.append(Metric(f"eval/{name}", float(t[key]), now, step))
    for key in ("mean_return", "mean_cost", "mean_cost_ucb", "within_limit_rate",
                "certified_rate"):
        metrics.append(Metric(f"eval/{key}", float(report[key]), now, 0))
    recorder._log_metrics(metrics)
    recorder._send(recorder.client.log_text, recorder.run_id, table, "eval/table.txt")
    recorder._send(recorder.client.log_text, recorder.run_id,
                   json.dumps(report, indent=2, default=plain), "eval/report.json")
    for path in report["videos"]:
        recorder._send(recorder.client.log_artifact, recorder.run_id, path, "videos")


# -- the subcommand ----------------------------------------------------------------------------
def configure_eval(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--checkpoint", required=True, type=abs_path,
                        help="an algorithm checkpoint folder (train --checkpoint-dir), a "
                             "policy folder of adapt --save, or any policy folder "
                             "metacpo_rllib.load_policy loads")
    parser.add_argument("--family", default=None,
                        help="task family (default: the checkpoint's, or the one in the "
                             f"{MANIFEST} of adapt --save; else required)")
    parser.add_argument("--task", dest="task_specs", type=json_object, action="append",
                        default=None, metavar="JSON",
                        help="evaluate on this task (repeatable): its layout parameters, "
                             "e.g. '{\"radius\": 1.2, \"factor\": 0.6}', or a task dict "
                             "with \"params\" and \"cost_limit\" (default: --tasks sampled)")
    parser.add_argument("--tasks", type=count(1), default=None,
                        help=f"number of tasks sampled from --split, without --task "
                             f"(default: {DEFAULT_TASKS}; for a policy saved by adapt --save, "
                             "the task it was adapted to)")
    parser.add_argument("--split", default="test", choices=("train", "test", "test_tight"),
                        help="which task distribution the tasks come from")
    parser.add_argument("--task-seed", type=count(0), default=12345,
                        help="seed of the task sample (as adapt's)")
    parser.add_argument("--cost-limit", type=number(0), default=None,
                        help="the tasks' cost limit h (default: the family's for the split, "
                             "i.e. its test limit on held-out tasks)")
    parser.add_argument("--episodes", type=count(1), default=20,
                        help="evaluation episodes per task")
    parser.add_argument("--deterministic", action="store_true",
                        help="act with the mean action (default: sampled actions, as "
                             "deployed)")
    parser.add_argument("--seed", type=count(0), default=0,
                        help="evaluation seed: env seeds and action noise (the same seed "
                             "gives the same episodes as adapt's evaluation)")
    parser.add_argument("--env-config", type=json_object, default={},
                        help="family overrides as JSON on top of the checkpoint's, e.g. "
                             "'{\"max_episode_steps\": 200}'")
    parser.add_argument("--video", type=abs_path, default=None, metavar="DIR",
                        help="write episode videos (mp4, or gif without ffmpeg) to DIR "
                             "(safety-gymnasium families; default: none)")
    parser.add_argument("--video-episodes", type=count(1), default=1,
                        help="episodes recorded per task with --video")
    parser.add_argument("--camera", default="fixedfar", choices=VIDEO_CAMERAS,
                        help="the video's camera: fixedfar (top-down, whole arena), "
                             "fixednear, track (follows the agent) or vision (its eyes)")
    parser.add_argument("--video-size", type=count(16, 2048), default=320,
                        help="video frame width and height in pixels")
    parser.add_argument("--json", type=abs_path, default=None, metavar="FILE",
                        help="write the JSON report to FILE ('-': stdout; default: none)")
    parser.add_argument("--mlflow", action="store_true",
                        help="log the table as MLflow metrics and the videos as artifacts")
    try:
        from metacpo_rllib.experiments.commands import add_tracking_args
    except ImportError:  # the experiment service is optional
        return
    add_tracking_args(parser)


def _check_args(args: argparse.Namespace) -> Origin:
    """Every flag checked before anything heavy (one UsageError line each); returns where
    the policy comes from, with ``--env-config`` added to the family's settings."""
    from metacpo_rllib.envs import FAMILIES

    path = Path(args.checkpoint)
    if "://" in args.checkpoint:
        raise UsageError(f"--checkpoint: expected a local folder, got {args.checkpoint}")
    if not path.exists():
        raise UsageError(f"--checkpoint: {path} does not exist")
    if not path.is_dir():
        raise UsageError(f"--checkpoint: {path} is not a directory")
    if args.family is not None and args.family not in FAMILIES:
        raise UsageError(f"--family: unknown family {args.family!r}; known: "
                         f"{', '.join(FAMILIES)}")
    origin = policy_origin(args.checkpoint)
    if origin is None and args.family is None:
        raise UsageError(f"--family: required, {path} names no family (not in an "
                         f"algorithm checkpoint, no {MANIFEST})")
    if origin is not None and args.family not in (None, origin.family):
        raise UsageError(f"--family: the checkpoint's policy was trained on {origin.family}, "
                         f"not {args.family}"
                         + (f" (as {origin.where} says)" if origin.where else ""))
    origin = origin or Origin(args.family)
    family = origin.family
    if args.video:
        if family not in SAFETY_FAMILIES:
            raise UsageError(f"--video: only the safety-gymnasium families "
                             f"({', '.join(SAFETY_FAMILIES)}) render; {family} does not")
        check_writable_dir(args.video, "--video")
        from metacpo_rllib.render import RenderError, select_gl_backend

        try:
            args.gl_backend = select_gl_backend()
        except RenderError as err:
            raise UsageError(f"--video: {err}") from None
    check_writable_file(args.json, "--json")
    return dataclasses.replace(origin, overrides={**origin.overrides, **args.env_config})


def _load(args: argparse.Namespace, origin: Origin) -> tuple[Any, Any, list[Any]]:
    """(policy, family, tasks), each problem as a UsageError naming its flag."""
    from metacpo_rllib.envs import make_family
    from metacpo_rllib.policy import load_policy

    try:
        family = make_family(origin.family, **origin.overrides)
    except ValueError as err:
        raise UsageError(f"--env-config: {err}") from None
    if args.split not in family.splits:
        raise UsageError(f"--split: {family.name} has the splits {', '.join(family.splits)}")
    try:
        if args.task_specs:
            tasks = given_tasks(family, args.task_specs, args.split, args.cost_limit)
        elif args.tasks is None and origin.task is not None:  # an adapted policy's own task
            task = family.validate_task(origin.task)
            tasks = [task if args.cost_limit is None else task.with_cost_limit(args.cost_limit)]
        else:
            tasks = family.sample_tasks(args.tasks or DEFAULT_TASKS, args.split,
                                        seed=args.task_seed, cost_limit=args.cost_limit)
    except ValueError as err:
        raise UsageError(f"--task: {err}") from None
    try:
        policy = load_policy(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError("--checkpoint: " + str(err).removeprefix("path: ")) from None
    env = family.make_env(tasks[0])
    try:
        obs_dim = int(np.prod(env.observation_space.shape))
        act_dim = int(np.prod(env.action_space.shape))
    finally:
        env.close()
    if (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        raise UsageError(f"--family: the policy maps {policy.obs_dim}-dim observations to "
                         f"{policy.act_dim}-dim actions, {family.name}'s env has "
                         f"{obs_dim} and {act_dim}")
    return policy, family, tasks


def run_eval(args: argparse.Namespace) -> int:
    """``metacpo eval``: checks, policy and tasks, the episodes, the table (and JSON,
    videos, MLflow run)."""

    policy, family, tasks = _load(args, _check_args(args))
    video = None if not args.video else {
        "dir": args.video, "episodes": args.video_episodes, "camera": args.camera,
        "size": args.video_size, "fps": VIDEO_FPS}
    mode = "mean action" if args.deterministic else "sampled actions"
    out = sys.stderr if args.json == "-" else sys.stdout  # --json -: stdout is the JSON
    split = "/".join(sorted({t.split for t in tasks}))
    print(f"eval {args.checkpoint} on {len(tasks)} {family.name} {split} tasks: "
          f"{args.episodes} episodes per task, {mode}, seed {args.seed}"
          + (f"; videos in {args.video} ({args.gl_backend})" if video else ""), file=out,
          flush=True)
    params = {"checkpoint": args.checkpoint, "family": family.name, "split": split,
              "tasks": len(tasks), "episodes": args.episodes, "seed": args.seed,
              "deterministic": args.deterministic, "task_seed": args.task_seed,
              "cost_limit": tasks[0].cost_limit if len(
                  {t.cost_limit for t in tasks}) == 1 else "per task"}
    with _tracking(args, family.name, params) as run:
        report = evaluate(policy, family, tasks, args.episodes, args.seed,
                          args.deterministic, video)
        report.update(checkpoint=args.checkpoint, split=split,
                      command=getattr(args, "command_line", None))
        table = evaluation_report_table(report)
        if run is not None:
            log_evaluation(run, report, table)
    print(table, file=out)
    for path in report["videos"]:
        print(f"video: {path}", file=out)
    if args.json:
        write_json(report, args.json)
    return 0


@contextlib.contextmanager
def _tracking(args: argparse.Namespace, family: str, params: Mapping[str, Any]
              ) -> Iterator[Any]:
    if not args.mlflow:
        yield None
        return

    if not hasattr(args, "mlflow_uri"):
        raise UsageError("--mlflow: MLflow tracking is not installed")
    experiment = args.mlflow_experiment or f"eval-{family}"
    name = f"eval-{family}-seed{args.seed}"
    from metacpo_rllib.experiments.tracking import tracked_run

    with tracked_run(experiment, name, params=params, tracking_uri=args.mlflow_uri,
                     tags={"kind": "eval", "family": family, "checkpoint": args.checkpoint,
                           "mlflow.source.name": "metacpo eval"}) as run:
        yield run


def register(add_command: Callable[..., None]) -> None:
    """Add ``eval`` to the ``metacpo`` CLI."""
    add_command("eval", "evaluate a checkpoint or saved policy on tasks: return, cost, its "
                "upper confidence bound and the limit per task (optionally with videos)",
                configure_eval, run_eval)


if __name__ == "__main__":  # python -m metacpo_rllib.evaluate ... (as metacpo eval ...)
    from metacpo_rllib import cli

    sys.exit(cli.main(["eval", *sys.argv[1:]]))
