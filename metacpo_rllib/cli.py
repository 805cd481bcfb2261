"""The ``metacpo`` console script: one subcommand per entry of ``COMMANDS`` (train, adapt, ...)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional, Sequence

ALGO_NAMES = ("meta-cpo", "meta-trpo", "cpo", "trpo")
SAFETY_FAMILIES = ("PointCircle", "CarCircleHazard", "PointButton")


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: ``configure`` adds its arguments, ``run`` executes it (exit code)."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: Subcommands by name. To add one, write configure/run functions (anywhere) and call
#: ``add_command``: from this module, or from a module listed in ``COMMAND_MODULES``.
COMMANDS: dict[str, Command] = {}

#: Modules whose ``register(add_command)`` adds subcommands when the parser is built
#: (skipped if the module is absent).
COMMAND_MODULES: tuple[str, ...] = ("metacpo_rllib.experiments.commands",)


def add_command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int]) -> None:
    """Register the subcommand ``name``."""
    COMMANDS[name] = Command(help, configure, run)


# -- shared helpers ----------------------------------------------------------------------
class UsageError(Exception):
    """Invalid arguments: reported as one line, exit code 2."""


def _check_counts(args: argparse.Namespace, **minimums: int) -> None:
    for name, low in minimums.items():
        value = getattr(args, name)
        if value < low:
            flag = getattr(args, "flag_names", {}).get(name, "--" + name.replace("_", "-"))
            raise UsageError(f"{flag}: expected an integer >= {low}, got {value}")
    episodes = getattr(args, "adapt_episodes", None)
    if episodes is not None and episodes < 1:
        raise UsageError(f"--adapt-episodes: expected an integer >= 1, got {episodes}")


def family_defaults(family: str) -> dict[str, int]:
    """Small per-iteration sampling defaults: safety-gymnasium episodes are 500-1000 steps
    at ~1000 steps/s, the toy CMDPs' are tens of steps."""
    if family in SAFETY_FAMILIES:
        return {"tasks_per_iteration": 2, "episodes_per_task": 1}
    return {"tasks_per_iteration": 4, "episodes_per_task": 8}


@contextlib.contextmanager
def local_ray(num_cpus: int, address: Optional[str] = None) -> Iterator[None]:
    """Ray for a command: an embedded local instance (``num_cpus``, its own temp dir), shut
    down afterwards; or, with ``address`` / ``$RAY_ADDRESS`` set (e.g. inside a Ray job),
    a connection to that cluster, closed afterwards. An already initialised Ray in this
    process is used as is.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        print(f"ray: joined the cluster at {address}", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp_dir = tempfile.mkdtemp(prefix="metacpo-ray-", dir="/tmp")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             _temp_dir=temp_dir, log_to_driver=False, configure_logging=False)
    print(f"ray: embedded local instance ({num_cpus} CPUs)", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _fmt(value: float, width: int = 8) -> str:
    return f"{'nan':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.2f}"


def adaptation_table(report: dict[str, Any]) -> str:
    """Per held-out task and adaptation step: ``return / cost`` (``*`` = over the limit)."""
    steps = report["steps"]
    header = f"{'task':>9} {'limit':>6} " + " ".join(f"{'step ' + str(s):>19}" for s in steps)
    lines = [header]

    def cell(ret: float, cost: float, limit: float) -> str:
        flag = "*" if not math.isnan(cost) and cost > limit else " "
        return f"{_fmt(ret)} / {_fmt(cost, 6)}{flag}"

    for task in report["tasks"]:
        cells = [cell(r, c, task["cost_limit"]) for r, c in zip(task["return"], task["cost"])]
        lines.append(f"{task['task_id']:>9} {task['cost_limit']:>6.1f} " + " ".join(cells))
    means = [f"{_fmt(r)} / {_fmt(c, 6)} " for r, c in zip(report["mean_return"],
                                                          report["mean_cost"])]
    lines.append(f"{'mean':>9} {'':>6} " + " ".join(means))
    lines.append(f"{'violation':>9} {'':>6} "
                 + " ".join(f"{_fmt(v, 17)}  " for v in report["violation_rate"]))
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _write_json(report: dict[str, Any], path: Optional[str]) -> None:
    text = json.dumps(report, indent=2, default=_json_default)
    if path in (None, "-"):
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text + "\n")
        print(f"wrote {path}")


def _test_tasks(family: Any, args: argparse.Namespace, split: str = "test") -> list:
    return family.sample_tasks(args.tasks, split, seed=args.task_seed,
                               cost_limit=args.cost_limit)


def _run_adaptation(algo: Any, tasks: list, args: argparse.Namespace, title: str) -> dict:
    report = algo.adapt(tasks, steps=args.steps, episodes_per_task=args.adapt_episodes)
    print(title)
    print(adaptation_table(report))
    return report


def _add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the embedded Ray")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster (default: $RAY_ADDRESS if set, else an "
                             "embedded local Ray)")


def _add_adapt_args(parser: argparse.ArgumentParser, tasks_flag: str, steps_flag: str) -> None:
    parser.add_argument(tasks_flag, dest="tasks", type=int, default=2,
                        help="number of held-out tasks (default 2)")
    parser.add_argument(steps_flag, dest="steps", type=int, default=1,
                        help="adaptation steps (default 1)")
    parser.add_argument("--adapt-episodes", type=int, default=None,
                        help="episodes per task and step (default: episodes per task)")
    parser.add_argument("--task-seed", type=int, default=12345,
                        help="seed of the held-out task sample (default 12345)")
    parser.set_defaults(flag_names={"tasks": tasks_flag, "steps": steps_flag})


# -- train -------------------------------------------------------------------------------
def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, help="task family, e.g. PointCircle")
    parser.add_argument("--algo", default="meta-cpo", choices=ALGO_NAMES)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--num-env-runners", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None,
                        help="save the final algorithm state here")
    parser.add_argument("--tasks-per-iteration", type=int, default=None,
                        help="default: 2 on safety-gymnasium families, 4 otherwise")
    parser.add_argument("--episodes-per-task", type=int, default=None,
                        help="default: 1 on safety-gymnasium families, 8 otherwise")
    parser.add_argument("--inner-steps", type=int, default=None,
                        help="K (meta algorithms only; default 1)")
    parser.add_argument("--train-cost-limit", type=float, default=None,
                        help="override every training task's cost limit")
    parser.add_argument("--cost-limit", type=float, default=None,
                        help="held-out tasks' cost limit (default: the family's test limit)")
    parser.add_argument("--env-config", type=json.loads, default={},
                        help="family overrides as JSON, e.g. '{\"horizon\": 40}'")
    parser.add_argument("--json", default=None, help="write a JSON report here ('-': stdout)")
    _add_ray_args(parser)
    _add_adapt_args(parser, "--test-tasks", "--adapt-steps")
    try:
        from metacpo_rllib.experiments.commands import add_tracking_args
    except ImportError:  # the experiment service is optional
        return
    parser.add_argument("--no-mlflow", action="store_true",
                        help="do not track the run in MLflow (tracked by default)")
    add_tracking_args(parser)


@contextlib.contextmanager
def _tracking(args: argparse.Namespace, config: Any) -> Iterator[Any]:
    """An MLflow run recorder (the default), else None (``--no-mlflow``, or no experiment
    service installed)."""
    if not hasattr(args, "mlflow_uri") or args.no_mlflow:
        yield None
        return
    uri, experiment = args.mlflow_uri, args.mlflow_experiment
    from metacpo_rllib.experiments.tracking import log_training_run

    params = {"iterations": args.iterations, "test_tasks": args.tasks,
              "adapt_steps": args.steps}
    with log_training_run(config, tracking_uri=uri, experiment=experiment,
                          params=params) as run:
        yield run


def build_config(args: argparse.Namespace) -> Any:
    """The AlgorithmConfig the ``train`` arguments describe."""
    from metacpo_rllib.rllib import ALGO_CONFIGS

    defaults = family_defaults(args.family)
    def pick(name: str) -> int:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    training: dict[str, Any] = {
        "tasks_per_iteration": pick("tasks_per_iteration"),
        "episodes_per_task": pick("episodes_per_task"),
        "cost_limit": args.train_cost_limit,
        "seed": args.seed,
    }
    if args.inner_steps is not None:
        training["inner_steps"] = args.inner_steps
    return (ALGO_CONFIGS[args.algo]()
            .environment(args.family, env_config=dict(args.env_config))
            .env_runners(num_env_runners=args.num_env_runners)
            .training(**training))


def progress_line(results: dict[str, Any], iteration: int, total: int) -> str:
    m = results["metacpo"]
    return (f"iter {iteration:>3}/{total}  return {_fmt(m['pre_return_mean'])} ->"
            f"{_fmt(m['post_return_mean'])}  cost {_fmt(m['pre_cost_mean'], 6)} ->"
            f"{_fmt(m['post_cost_mean'], 6)} (limit {m['cost_limit_mean']:.1f})  "
            f"violation {m['pre_violation_rate']:.2f} -> {m['post_violation_rate']:.2f}  "
            f"time {results['time_this_iter_s']:.1f}s (sample {m['time']['sample_s']:.1f}s, "
            f"learner {m['time']['learner_s']:.1f}s)")


def run_train(args: argparse.Namespace) -> int:
    _check_counts(args, iterations=1, tasks=0, steps=0, num_env_runners=0)
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
            for i in range(1, args.iterations + 1):
                results = algo.train()
                history.append(results["metacpo"])
                if run is not None:
                    run.log_result(results)
                print(progress_line(results, i, args.iterations), flush=True)
            checkpoint = None
            if args.checkpoint_dir:
                checkpoint = algo.save_to_path(args.checkpoint_dir)
                print(f"checkpoint: {checkpoint}")
                if run is not None:
                    run.log_checkpoint(checkpoint)
            report = None
            if args.tasks > 0:
                tasks = _test_tasks(algo.family, args)
                report = _run_adaptation(
                    algo, tasks, args,
                    f"held-out {args.family} test tasks (return / cost per adaptation step)")
                if run is not None:
                    run.log_adaptation(report)
        finally:
            algo.stop()
    if args.json:
        _write_json({"train": history, "checkpoint": checkpoint, "adapt": report}, args.json)
    return 0


# -- adapt -------------------------------------------------------------------------------
def configure_adapt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="an algorithm checkpoint dir")
    parser.add_argument("--family", default=None,
                        help="task family (default: the checkpoint's)")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--cost-limit", type=float, default=None,
                        help="the tasks' cost limit (default: the family's for the split)")
    parser.add_argument("--json", default=None, help="also write the JSON report here")
    _add_ray_args(parser)
    _add_adapt_args(parser, "--tasks", "--steps")


def run_adapt(args: argparse.Namespace) -> int:
    from ray.rllib.algorithms.algorithm import Algorithm

    import metacpo_rllib.rllib  # noqa: F401  (registers envs and algorithms)

    _check_counts(args, tasks=1, steps=0)
    with local_ray(max(args.num_cpus, 1), args.ray_address):
        algo = Algorithm.from_checkpoint(args.checkpoint)
        try:
            family = algo.family
            if args.family not in (None, family.name):
                raise UsageError(f"--family: the checkpoint's policy was trained on "
                                 f"{family.name}, not {args.family}")
            tasks = _test_tasks(family, args, args.split)
            report = _run_adaptation(
                algo, tasks, args,
                f"{type(algo).__name__} from {args.checkpoint} on {args.tasks} {family.name} "
                f"{args.split} tasks (return / cost per adaptation step)")
        finally:
            algo.stop()
    _write_json(report, None)
    if args.json:
        _write_json(report, args.json)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    load_command_modules()
    parser = argparse.ArgumentParser(
        prog="metacpo", description="Meta-CPO (constrained meta-RL) as a Ray RLlib service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["metacpo", *argv])  # recorded with results
    start = time.perf_counter()
    try:
        code = COMMANDS[args.command].run(args)
    except UsageError as err:  # invalid settings: one clear line, no traceback
        print(f"metacpo {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
