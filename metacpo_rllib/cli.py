"""The ``metacpo`` console script: one subcommand per entry of ``COMMANDS`` (train, adapt, ...)."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from metacpo_rllib import __version__, console
from metacpo_rllib.cli_support import (  # noqa: F401 (re-exported: the CLI's helpers)
    ALGO_NAMES,
    COMMANDS,
    Command,
    DeprecatedFlag,
    HelpFormatter,
    Parser,
    SAFETY_FAMILIES,
    SAMPLING_DEFAULTS,
    UsageError,
    fmt_value,
    abs_path,
    adaptation_table,
    add_adapt_args,
    add_command,
    add_ray_args,
    add_sampling_args,
    check_checkpoint,
    check_counts,
    check_writable_dir,
    check_writable_file,
    count,
    evaluation_table,
    json_default,
    json_object,
    local_ray,
    model_name,
    number,
    write_json,
)

#: Modules whose ``register(add_command)`` adds subcommands when the parser is built
#: (skipped if the module is absent).
COMMAND_MODULES: tuple[str, ...] = ("metacpo_rllib.experiments.commands",
                                     "metacpo_rllib.evaluate")



def _test_tasks(family: Any, args: argparse.Namespace, cost_limit: Optional[float],
                split: str = "test") -> list:
    return family.sample_tasks(args.tasks, split, seed=args.task_seed, cost_limit=cost_limit)


def _run_adaptation(algo: Any, tasks: list, args: argparse.Namespace, title: str,
                    return_policies: bool = False) -> dict:
    with console.progress(args.steps + 1, "adapt", "step") as bar:  # one round per step
        algo.on_round = lambda k, n: bar.update(1)
        try:
            report = algo.adapt(tasks, steps=args.steps, episodes_per_task=args.adapt_episodes,
                                eval_episodes=args.eval_episodes,
                                return_policies=return_policies)
        finally:
            algo.on_round = None
    print(title)
    print(adaptation_table(report))
    return report


# -- train -------------------------------------------------------------------------------
#: ``train --critics``: the linear baseline, learned critics, or critics with privileged inputs.
CRITIC_CHOICES = ("off", "on", "privileged")


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True,
                        help="task family: PointCircle, CarCircleHazard, PointButton, "
                             "ConstrainedBandit or PointNav")
    parser.add_argument("--algo", default="meta-cpo", choices=ALGO_NAMES,
                        help="the algorithm: meta-cpo, meta-trpo (no cost constraint), "
                             "cpo (no inner loop) or trpo (neither)")
    parser.add_argument("--iterations", type=count(1), default=3,
                        help="training (meta-)iterations")
    parser.add_argument("--num-env-runners", type=count(0), default=0,
                        help="remote EnvRunner actors sampling tasks in parallel (0: sample "
                             "in this process)")
    parser.add_argument("--seed", type=count(0), default=0,
                        help="seed of the training tasks, the sampling and the policy's "
                             "initialisation")
    parser.add_argument("--checkpoint-dir", type=abs_path, default=None,
                        help="save the final algorithm state to this folder (checked "
                             "writable before training; default: no checkpoint)")
    add_sampling_args(parser)
    parser.add_argument("--inner-steps", type=count(0), default=None,
                        help="K, inner adaptation steps per task (meta algorithms only; "
                             "default 1)")
    parser.add_argument("--trust-region-delta", type=number(0, exclusive_low=True), default=None,
                        help="outer trust-region radius (KL; default: the config's 0.01)")
    parser.add_argument("--inner-delta", type=number(0, exclusive_low=True), default=None,
                        help="adaptation (inner) trust-region radius (KL; default: the "
                             "config's 0.01)")
    parser.add_argument("--adaptation-delta", type=number(0, exclusive_low=True),
                        default=None,
                        help="trust-region radius of every test-time adaptation step (KL; "
                             "default: --inner-delta for meta algorithms, "
                             "--trust-region-delta for CPO / TRPO)")
    parser.add_argument("--adaptation-first-episodes", type=count(1), default=None,
                        dest="adaptation_first_episodes_per_task",
                        help="episodes per task in the first adaptation batch only (the "
                             "one step 1 learns θ's cost from; default: as every batch)")
    parser.add_argument("--adaptation-cost-window", type=count(0), default=None,
                        help="J_C of an adaptation step also pools up to N of the task's "
                             "episodes from its earlier steps (default: the config's)")
    parser.add_argument("--adaptation-cost-free-scale", type=number(0, 1, exclusive_low=True),
                        default=None,
                        help="factor in (0, 1] on the radius of an adaptation step whose "
                             "batch saw no cost (default: the config's)")
    parser.add_argument("--adaptation-recovery-scale", type=number(1), default=None,
                        help="factor >= 1 on the radius of an adaptation step with c > 0 "
                             "(default: the config's)")
    parser.add_argument("--adaptation-cost-margin-rate", type=number(0), default=None,
                        help="rate >= 0 of each task's margin on c, learned from its "
                             "adaptation steps' realised minus predicted cost changes "
                             "(0: off; default: the config's)")
    parser.add_argument("--adaptation-cost-room", type=number(0), default=None,
                        help="k >= 0: an adaptation step below its limit takes a radius "
                             "in which the first-order cost rises by at most k times the "
                             "room h - J_C (0: off; default: the config's)")
    parser.add_argument("--adaptation-limit-margin", type=number(0), default=None,
                        help="f in [0, 1): adaptation steps aim at (1 - f) h; costs are "
                             "still reported against h (0: off; default: the config's)")
    parser.add_argument("--adaptation-backtracks", type=count(0), default=None,
                        help="R >= 0: an adaptation step whose policy's next batch costs "
                             "more than h and the batch it learned from is halved and "
                             "sampled again, up to R times, then undone (0: off; default: "
                             "the config's)")
    parser.add_argument("--adaptation-backtrack-bound", action="store_true", default=None,
                        help="that check holds the batch's one-sided 95%% upper bound of "
                             "its mean cost to h instead of the mean")
    parser.add_argument("--adaptation-backtrack-fresh", action="store_true", default=None,
                        help="the next step learns from a fresh batch, not from the one "
                             "that passed that check (twice the samples per step)")
    parser.add_argument("--curriculum-iterations", type=count(0), default=None,
                        help="M >= 0: the first M iterations draw their training tasks from "
                             "--curriculum-ranges instead of --env-config's ranges (0: off; "
                             "default: the config's)")
    parser.add_argument("--curriculum-ranges", type=json_object, default=None,
                        help="the ranges override of those iterations as JSON, e.g. "
                             "'{\"train\": {\"num_hazards\": [4, 6]}}' ({}: the family's "
                             "own; default: none)")
    parser.add_argument("--critics", choices=CRITIC_CHOICES, default="off",
                        help="GAE baselines: off (a linear baseline fitted per batch, the "
                             "default), on (learned reward and cost critics) or privileged "
                             "(critics that also see each task's layout and cost limit)")
    parser.add_argument("--normalize-observations", action="store_true",
                        help="the policy normalises its observations with a running mean / "
                             "variance filter (kept in its weights and checkpoints)")
    parser.add_argument("--eval-interval", type=count(0), default=0,
                        help="evaluate θ on fixed training tasks every N iterations, "
                             "--eval-episodes episodes each (0: never)")
    parser.add_argument("--train-cost-limit", type=number(0), default=None,
                        help="override every training task's cost limit (default: the "
                             "family's train limit)")
    parser.add_argument("--test-cost-limit", type=number(0), default=None,
                        help="held-out test tasks' cost limit (default: the family's test "
                             "limit)")
    parser.add_argument("--cost-limit", action=DeprecatedFlag, new="--test-cost-limit",
                        dest="test_cost_limit", type=number(0), default=None)
    parser.add_argument("--env-config", type=json_object, default={},
                        help="family overrides as JSON, e.g. '{\"horizon\": 40}'")
    parser.add_argument("--json", type=abs_path, default=None, metavar="FILE",
                        help="write a JSON report to FILE ('-': stdout; default: none)")
    add_ray_args(parser)
    add_adapt_args(parser, "--test-tasks", "--adapt-steps")
    try:
        from metacpo_rllib.experiments.commands import add_tracking_args
    except ImportError:  # the experiment service is optional
        return
    parser.add_argument("--no-mlflow", action="store_true",
                        help="do not track the run in MLflow (tracked by default)")
    add_tracking_args(parser)
    parser.add_argument("--register-model", type=model_name, default=None, metavar="NAME",
                        help="also register the trained policy (logged as the run's MLflow "
                             "model 'policy') in the model registry under NAME, a new "
                             "version per run (default: not registered)")


@contextlib.contextmanager
def _tracking(args: argparse.Namespace, config: Any) -> Iterator[Any]:
    """An MLflow run recorder (the default), else None (``--no-mlflow``, or no experiment
    service installed)."""
    if not hasattr(args, "mlflow_uri") or args.no_mlflow:
        yield None
        return
    uri, experiment = args.mlflow_uri, args.mlflow_experiment
    from metacpo_rllib.experiments.tracking import cost_limits, log_training_run

    params = {"iterations": args.iterations, "test_tasks": args.tasks,
              "adapt_steps": args.steps,
              **cost_limits(config, args.test_cost_limit)}
    with log_training_run(config, tracking_uri=uri, experiment=experiment,
                          params=params) as run:
        yield run


def build_config(args: argparse.Namespace) -> Any:
    """The AlgorithmConfig the ``train`` arguments describe."""
    from metacpo_rllib.rllib import ALGO_CONFIGS

    def pick(name: str) -> int:
        value = getattr(args, name)
        return SAMPLING_DEFAULTS[name] if value is None else value

    training: dict[str, Any] = {
        "tasks_per_iteration": pick("tasks_per_iteration"),
        "episodes_per_task": pick("episodes_per_task"),
        "train_cost_limit": args.train_cost_limit,
        "seed": args.seed,
    }
    for name in ("inner_steps", "trust_region_delta", "inner_delta", "adaptation_delta",
                 "adaptation_first_episodes_per_task",
                 "adaptation_cost_window", "adaptation_cost_free_scale",
                 "adaptation_recovery_scale", "adaptation_cost_margin_rate",
                 "adaptation_cost_room", "adaptation_limit_margin", "adaptation_backtracks",
                 "adaptation_backtrack_bound", "adaptation_backtrack_fresh",
                 "curriculum_iterations", "curriculum_ranges"):
        if getattr(args, name) is not None:
            training[name] = getattr(args, name)
    if args.critics != "off":
        training.update(critics=True, critic_privileged=args.critics == "privileged")
    if args.normalize_observations:
        training["normalize_observations"] = True
    config = (ALGO_CONFIGS[args.algo]()
              .environment(args.family, env_config=dict(args.env_config))
              .env_runners(num_env_runners=args.num_env_runners)
              .training(**training))
    if args.eval_interval:
        config.evaluation(evaluation_interval=args.eval_interval,
                          evaluation_duration=max(args.eval_episodes, 2))
    return config


def progress_line(results: dict[str, Any], iteration: int, total: int) -> str:
    m = results["metacpo"]
    return (f"iter {iteration:>3}/{total}  return {fmt_value(m['pre_return_mean'])} ->"
            f"{fmt_value(m['post_return_mean'])}  cost {fmt_value(m['pre_cost_mean'], 6)} ->"
            f"{fmt_value(m['post_cost_mean'], 6)} (limit {m['cost_limit_mean']:.1f})  "
            f"violation {m['pre_violation_rate']:.2f} -> {m['post_violation_rate']:.2f}  "
            f"time {results['time_this_iter_s']:.1f}s (sample {m['time']['sample_s']:.1f}s, "
            f"learner {m['time']['learner_s']:.1f}s)" + training_evaluation_line(results))


def training_evaluation_line(results: dict[str, Any]) -> str:
    """θ's evaluation on the fixed training tasks, when this iteration ran one: mean
    episode cost ≤ its 95% upper bound against the training limit ("" otherwise)."""
    ev = results.get("evaluation") or {}
    if "mean_cost" not in ev:
        return ""
    met = "within" if ev["meets_limit"] else "OVER"
    return (f"\n  evaluation of θ on {ev['num_tasks']} training tasks x "
            f"{ev['episodes_per_task']} episodes: return {ev['mean_return']:.2f}, cost "
            f"{ev['mean_cost']:.2f} ≤ {ev['cost_ucb']:.2f} (95% bound), {met} the limit "
            f"{ev['cost_limit']:.1f}")


def _log_policies(run: Any, folders: dict[str, tuple[Path, dict[str, str]]],
                  register: Optional[str]) -> None:
    """Log each saved policy folder (name -> (folder, tags)) as an MLflow model of the run
    and, with ``register``, as a new version of that registered model."""
    for name, (folder, tags) in folders.items():
        info = run.log_policy(str(folder), name, registered_model_name=register, tags=tags)
        if info is not None:
            version = getattr(info, "registered_model_version", None)
            print(f"MLflow model {name}: {info.model_uri}"
                  + (f" (registered: {register} version {version})" if version else ""))


def _log_theta(run: Any, algo: Any, register: Optional[str]) -> None:
    """Log θ as the run's MLflow model ``policy`` (saved to a temporary folder first)."""
    with tempfile.TemporaryDirectory(prefix="metacpo-policy-") as tmp:
        folder = algo.as_policy().save(Path(tmp) / "policy")
        _log_policies(run, {"policy": (folder, {"algorithm": type(algo).__name__,
                                                 "family": algo.family.name})}, register)


def run_train(args: argparse.Namespace) -> int:
    check_counts(args, iterations=1, tasks=0, steps=0, num_env_runners=0)
    if getattr(args, "register_model", None) and args.no_mlflow:
        raise UsageError("--register-model: needs MLflow tracking, which --no-mlflow "
                         "turns off")
    if args.checkpoint_dir and "://" not in args.checkpoint_dir:  # (URIs: RLlib's pyarrow)
        check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")
    check_writable_file(args.json, "--json")
    try:
        config = build_config(args)
        config.validate()  # fail on bad flags before Ray starts
    except ValueError as err:
        raise UsageError(str(err)) from None
    history = []
    with local_ray(max(args.num_cpus, 1), args.ray_address), _tracking(args, config) as run:
        algo = config.build_algo()
        try:
            print(f"training {args.algo} on {args.family}: {args.iterations} iterations, "
                  f"{config.tasks_per_iteration} tasks x {config.episodes_per_task} episodes, "
                  f"K={config.update_config().inner_steps}, "
                  f"{args.num_env_runners} remote EnvRunners", flush=True)
            with console.progress(args.iterations, "train", "iter") as bar:
                for i in range(1, args.iterations + 1):
                    results = algo.train()
                    history.append(results["metacpo"])
                    if run is not None:
                        run.log_result(results)
                    console.say(progress_line(results, i, args.iterations))
                    bar.update(1)
            checkpoint = None
            if args.checkpoint_dir:
                checkpoint = algo.save_to_path(args.checkpoint_dir)
                print(f"checkpoint: {checkpoint}")
                if run is not None:
                    run.log_checkpoint(checkpoint)
            if run is not None:
                _log_theta(run, algo, getattr(args, "register_model", None))
            report = None
            if args.tasks > 0:
                tasks = _test_tasks(algo.family, args, args.test_cost_limit)
                report = _run_adaptation(
                    algo, tasks, args,
                    f"held-out {args.family} test tasks (return / cost per adaptation step)")
                if run is not None:
                    run.log_adaptation(report)
        finally:
            algo.stop()
    if args.json:
        write_json({"train": history, "checkpoint": checkpoint, "adapt": report}, args.json)
    return 0


# -- adapt -------------------------------------------------------------------------------
def configure_adapt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=abs_path,
                        help="an algorithm checkpoint folder (train --checkpoint-dir)")
    parser.add_argument("--family", default=None,
                        help="task family (default: the checkpoint's)")
    parser.add_argument("--split", default="test", choices=("train", "test", "test_tight"),
                        help="which task distribution the tasks come from")
    parser.add_argument("--cost-limit", type=number(0), default=None,
                        help="the tasks' cost limit (default: the family's for the split)")
    parser.add_argument("--json", type=abs_path, default=None, metavar="FILE",
                        help="write the JSON report to FILE ('-': stdout; default: none)")
    parser.add_argument("--save", type=abs_path, default=None, metavar="DIR",
                        help="save θ and each task's adapted policy to DIR (theta/, "
                             "task-<id>/, policies.json; load_policy loads each folder; "
                             "checked writable before Ray starts; default: not saved)")
    add_ray_args(parser)
    add_adapt_args(parser, "--tasks", "--steps", min_tasks=1)
    try:
        from metacpo_rllib.experiments.commands import add_tracking_args
    except ImportError:  # the experiment service is optional
        return
    parser.add_argument("--mlflow", action="store_true",
                        help="track the adaptation in MLflow: the report and metrics, and "
                             "each adapted policy as an MLflow model (implied by "
                             "--mlflow-uri, --mlflow-experiment and --register-model)")
    add_tracking_args(parser)
    parser.add_argument("--register-model", type=model_name, default=None, metavar="NAME",
                        help="also register each adapted policy in the MLflow model "
                             "registry: one new version of NAME per task, tagged with the "
                             "task id (default: not registered)")


def _adapt_tracking_on(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) for name in
               ("mlflow", "mlflow_uri", "mlflow_experiment", "register_model"))


@contextlib.contextmanager
def _adapt_tracking(args: argparse.Namespace, algo: Any) -> Iterator[Any]:
    """The MLflow run of an adaptation (experiment ``adapt-<family>``), else None."""
    if not _adapt_tracking_on(args):
        yield None
        return
    from metacpo_rllib.experiments.tracking import log_training_run

    params = {"checkpoint": args.checkpoint, "split": args.split, "tasks": args.tasks,
              "steps": args.steps, "task_seed": args.task_seed,
              "eval_episodes": args.eval_episodes, "test_cost_limit": args.cost_limit}
    with log_training_run(algo.config, tracking_uri=args.mlflow_uri,
                          experiment=args.mlflow_experiment, params=params,
                          kind="adapt") as run:
        yield run


def save_policies(folder: Path, theta: Any, report: dict[str, Any], policies: list
                  ) -> dict[str, tuple[Path, dict[str, str]]]:
    """Save θ to ``folder/theta`` and each task's adapted policy to ``folder/task-<id>``,
    with ``policies.json`` listing them (task, cost limit, steps, final evaluation).
    Returns name -> (folder, tags) of the adapted policies."""
    folder.mkdir(parents=True, exist_ok=True)
    theta.save(folder / "theta")
    saved: dict[str, tuple[Path, dict[str, str]]] = {}
    entries = []
    for task, policy in zip(report["tasks"], policies):
        entry = {"task_id": task["task_id"], "cost_limit": task["cost_limit"],
                 "task": task["task"], "steps": report["steps"][-1], "folder": None}
        if "eval" in task:
            entry.update(eval_return=task["eval"]["return"][-1],
                         eval_cost=task["eval"]["cost"][-1])
        if policy is not None:
            name = f"task-{task['task_id']}"
            saved[name] = (policy.save(folder / name),
                           {"task_id": str(task["task_id"]),
                            "cost_limit": str(task["cost_limit"]),
                            "adaptation_steps": str(report["steps"][-1])})
            entry["folder"] = name
        entries.append(entry)
    manifest = {"algorithm": report["algorithm"], "family": report["family"],
                "theta": "theta", "policies": entries}
    (folder / "policies.json").write_text(json.dumps(manifest, indent=2,
                                                     default=json_default) + "\n")
    return saved


def run_adapt(args: argparse.Namespace) -> int:
    check_counts(args, tasks=1, steps=0)
    check_checkpoint(args.checkpoint)  # before Ray (and its imports) start
    check_writable_file(args.json, "--json")
    if args.save:
        if "://" in args.save:
            raise UsageError(f"--save: expected a local folder, got {args.save}")
        check_writable_dir(args.save, "--save")
    if args.family is not None:
        from metacpo_rllib.envs import FAMILIES

        if args.family not in FAMILIES:
            raise UsageError(f"--family: unknown family {args.family!r}; known: "
                             f"{', '.join(FAMILIES)}")

    from ray.rllib.algorithms.algorithm import Algorithm

    import metacpo_rllib.rllib  # noqa: F401  (registers envs and algorithms)

    with local_ray(max(args.num_cpus, 1), args.ray_address):
        algo = Algorithm.from_checkpoint(args.checkpoint)
        try:
            family = algo.family
            if args.family not in (None, family.name):
                raise UsageError(f"--family: the checkpoint's policy was trained on "
                                 f"{family.name}, not {args.family}")
            tasks = _test_tasks(family, args, args.cost_limit, args.split)
            with _adapt_tracking(args, algo) as run:
                report = _run_adaptation(
                    algo, tasks, args,
                    f"{type(algo).__name__} from {args.checkpoint} on {args.tasks} "
                    f"{family.name} {args.split} tasks (return / cost per adaptation step)",
                    return_policies=bool(args.save or run))
                _keep_policies(args, algo, report, run)
        finally:
            algo.stop()
    if args.json:
        write_json(report, args.json)
    return 0


def _keep_policies(args: argparse.Namespace, algo: Any, report: dict[str, Any],
                   run: Any) -> None:
    """After ``adapt``: save the policies (``--save``) and log them to the MLflow run
    (adapted policies as models, the report and metrics); ``report`` loses ``policies``."""
    policies = report.pop("policies", None)
    if policies is None:
        return
    with contextlib.ExitStack() as stack:
        folder = Path(args.save) if args.save else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="metacpo-policies-")))
        saved = save_policies(folder, algo.as_policy(), report, policies)
        if args.save:
            print(f"policies: θ and {len(saved)} adapted policies saved to {folder}")
        if run is not None:
            run.log_adaptation(report)
            _log_policies(run, saved, getattr(args, "register_model", None))


add_command("train", "train Meta-CPO / Meta-TRPO / CPO / TRPO on a task family, then adapt "
            "to held-out tasks", configure_train, run_train)
add_command("adapt", "adapt a checkpoint to held-out tasks and report return / cost per step",
            configure_adapt, run_adapt)


# -- entry point -------------------------------------------------------------------------
def load_command_modules() -> None:
    """Let each module of ``COMMAND_MODULES`` register its subcommands."""
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue
            raise
        module.register(add_command)


def version_text() -> str:
    """``metacpo --version``: this package and the versions it runs with."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("ray", "torch", "mlflow"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"metacpo {__version__} ({', '.join(parts)}, python {python})"


def build_parser() -> argparse.ArgumentParser:
    load_command_modules()
    parser = Parser(
        prog="metacpo", description="Meta-CPO (constrained meta-RL) as a Ray RLlib service.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand. Exit codes: 0 done, 2 invalid arguments (one line on stderr),
    130 / 143 interrupted by Ctrl-C / SIGTERM (open MLflow runs end as KILLED)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help / --version (0) pass; errors return their code
        if exit_.code in (0, None):
            raise
        return int(exit_.code) if isinstance(exit_.code, int) else 2
    args.command_line = shlex.join(["metacpo", *argv])  # recorded with results
    console.quiet_ray_noise()
    start = time.perf_counter()
    try:
        with console.signal_handlers():
            code = COMMANDS[args.command].run(args)
    except UsageError as err:  # invalid settings: one clear line, no traceback
        print(f"metacpo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM / SIGHUP (Terminated)
        ended = _end_open_runs()
        name = signal.Signals(console.interrupt_signal(interrupt)).name
        print(f"metacpo {args.command}: interrupted ({name})"
              + (f"; {len(ended)} open MLflow run(s) marked KILLED" if ended else ""),
              file=sys.stderr)
        return console.exit_code(interrupt)
    print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return code


def _end_open_runs() -> list[str]:
    """Mark the MLflow runs this process left open as KILLED (none without MLflow)."""
    if "metacpo_rllib.experiments.tracking" not in sys.modules:
        return []
    from metacpo_rllib.experiments.tracking import end_open_runs

    return end_open_runs("KILLED")


if __name__ == "__main__":  # python -m metacpo_rllib.cli: the importable module's main, so
    from metacpo_rllib.cli import main as _main  # that every command raises one UsageError

    sys.exit(_main())
