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
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from metacpo_rllib import __version__, console

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
COMMAND_MODULES: tuple[str, ...] = ("metacpo_rllib.experiments.commands",
                                     "metacpo_rllib.evaluate")


def add_command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int]) -> None:
    """Register the subcommand ``name``."""
    COMMANDS[name] = Command(help, configure, run)


# -- shared helpers ----------------------------------------------------------------------
class UsageError(Exception):
    """Invalid arguments: reported as one line, exit code 2."""


# argparse ``type=`` converters: a bad value is one line naming the flag, at parse time.
def count(low: int = 0, high: Optional[int] = None) -> Callable[[str], int]:
    """An integer flag in ``[low, high]``."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value
    convert.__name__ = "integer"
    return convert


def number(low: Optional[float] = None, high: Optional[float] = None
           ) -> Callable[[str], float]:
    """A finite float flag in ``[low, high]``."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bound = (f">= {low:g}" if high is None else f"<= {high:g}" if low is None
                     else f"in [{low:g}, {high:g}]")
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {value:g}")
        return value
    convert.__name__ = "number"
    return convert


def json_object(text: str) -> dict[str, Any]:
    """A JSON object flag (``--env-config``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"horizon\": 40}}', got {text!r} "
            f"({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def model_name(text: str) -> str:
    """A registered-model name (``--register-model``): not empty, no ``/`` or ``:``
    (MLflow's rule)."""
    if not text.strip() or any(c in text for c in "/:"):
        raise argparse.ArgumentTypeError(f"expected a model name without '/' or ':', "
                                         f"got {text!r}")
    return text


def abs_path(text: str) -> str:
    """A local path flag, made absolute against the working directory (RLlib, Tune and
    pyarrow take relative paths for URIs); ``-`` (stdout) and URIs (``s3://...``) pass."""
    if text == "-" or "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def check_writable_dir(path: str, flag: str) -> None:
    """``path`` is, or can be created as, a writable directory (nothing is created)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag}: {path} exists and is not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag}: cannot create {path}: {existing} is not a directory")
    try:  # os.access is not enough (root, read-only mounts): try a file
        with tempfile.TemporaryFile(dir=existing, prefix=".metacpo-write-check-"):
            pass
    except OSError as err:
        raise UsageError(f"{flag}: cannot write to {existing} "
                         f"({err.strerror or type(err).__name__})") from None


def check_writable_file(path: Optional[str], flag: str) -> None:
    """An output file path (``-``: stdout) can be written: its folder is writable."""
    if path in (None, "-"):
        return
    if "://" in path:
        raise UsageError(f"{flag}: expected a local file path, got {path}")
    if Path(path).is_dir():
        raise UsageError(f"{flag}: {path} is a directory, expected a file path")
    check_writable_dir(str(Path(path).parent), flag)


def check_checkpoint(path: str, flag: str = "--checkpoint") -> None:
    """``path`` is an RLlib algorithm checkpoint directory (checked before Ray starts)."""
    target = Path(path)
    if not target.exists():
        raise UsageError(f"{flag}: {path} does not exist")
    if not target.is_dir():
        raise UsageError(f"{flag}: {path} is not a directory")
    if not (target / "rllib_checkpoint.json").is_file():
        raise UsageError(f"{flag}: {path} is not an RLlib checkpoint "
                         "(no rllib_checkpoint.json)")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``metacpo train: error: argument --x: ...``) and
    every flag's default shown in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already names its
    default or there is none to show (no value, on/off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.nargs == 0
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


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
        console.reclaim_signals()
        print(f"ray: joined the cluster at {address}", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp_dir = tempfile.mkdtemp(prefix="metacpo-ray-", dir="/tmp")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             _temp_dir=temp_dir, log_to_driver=False, configure_logging=False)
    console.reclaim_signals()
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
    if report.get("eval"):
        lines[0:0] = [f"learning batches ({report.get('batch_episodes', '?')} episodes per "
                      "task and step: what each step learns from)"]
        lines += ["", evaluation_table(report)]
    return "\n".join(lines)


def evaluation_table(report: dict[str, Any], key: str = "eval") -> str:
    """Per task and adaptation step, on the evaluation episodes: ``return / cost ≤ upper
    bound`` (one-sided 95%); ``*`` = mean over the limit, ``c`` = certified (bound ≤ h)."""
    ev = report[key]
    lines = [f"evaluation ({ev['episodes_per_task']} episodes per task and step, "
             f"{'mean action' if ev.get('deterministic') else 'sampled actions'}, seed "
             f"{ev['seed']}; * over the limit, c certified)",
             f"{'task':>9} {'limit':>6} "
             + " ".join(f"{'step ' + str(s):>27}" for s in report["steps"])]
    for task in report["tasks"]:
        e, h = task[key], task["cost_limit"]
        cells = []
        for r, c, u in zip(e["return"], e["cost"], e["cost_ucb"]):
            flag = "*" if c > h else ("c" if u <= h else " ")
            cells.append(f"{_fmt(r)} / {_fmt(c, 6)} ≤ {_fmt(u, 6)}{flag}")
        lines.append(f"{task['task_id']:>9} {h:>6.1f} " + " ".join(cells))
    lines.append(f"{'mean':>9} {'':>6} " + " ".join(
        f"{_fmt(r)} / {_fmt(c, 6)} ≤ {_fmt(u, 6)} "
        for r, c, u in zip(ev["mean_return"], ev["mean_cost"], ev["mean_cost_ucb"])))
    for name, rates in (("within", ev["within_limit_rate"]), ("certified", ev["certified_rate"])):
        lines.append(f"{name:>9} {'':>6} " + " ".join(f"{_fmt(v, 25)}  " for v in rates))
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _write_json(report: dict[str, Any], path: Optional[str]) -> None:
    """The report as JSON: to ``path``, or on stdout for ``-`` (only then)."""
    text = json.dumps(report, indent=2, default=_json_default)
    if path in (None, "-"):
        print(text)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
        print(f"wrote {path}", file=sys.stderr)


def _test_tasks(family: Any, args: argparse.Namespace, split: str = "test") -> list:
    return family.sample_tasks(args.tasks, split, seed=args.task_seed,
                               cost_limit=args.cost_limit)


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


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """``--tasks-per-iteration`` and ``--episodes-per-task`` (train and compare)."""
    parser.add_argument("--tasks-per-iteration", type=count(1), default=None,
                        help="training tasks per iteration (default: 2 on safety-gymnasium "
                             "families, 4 otherwise)")
    parser.add_argument("--episodes-per-task", type=count(1), default=None,
                        help="episodes per task and sampling round (default: 1 on "
                             "safety-gymnasium families, 8 otherwise)")


def _add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-cpus", type=count(1), default=2,
                        help="CPUs of the embedded local Ray")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster (default: $RAY_ADDRESS if set, else an "
                             "embedded local Ray)")


def _add_adapt_args(parser: argparse.ArgumentParser, tasks_flag: str, steps_flag: str,
                    min_tasks: int = 0) -> None:
    parser.add_argument(tasks_flag, dest="tasks", type=count(min_tasks), default=2,
                        help="number of held-out tasks" + (" (0: no adaptation)"
                                                           if min_tasks == 0 else ""))
    parser.add_argument(steps_flag, dest="steps", type=count(0), default=1,
                        help="adaptation steps per task (step 0 is the policy itself)")
    parser.add_argument("--adapt-episodes", type=count(1), default=None,
                        help="episodes per task and step (default: episodes per task)")
    parser.add_argument("--eval-episodes", type=count(0), default=20,
                        help="fresh evaluation episodes per task and step, apart from the "
                             "learning batches (0: none)")
    parser.add_argument("--task-seed", type=count(0), default=12345,
                        help="seed of the held-out task sample")
    parser.set_defaults(flag_names={"tasks": tasks_flag, "steps": steps_flag})


# -- train -------------------------------------------------------------------------------
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
    parser.add_argument("--train-cost-limit", type=number(0), default=None,
                        help="override every training task's cost limit (default: the "
                             "family's train limit)")
    parser.add_argument("--cost-limit", type=number(0), default=None,
                        help="held-out tasks' cost limit (default: the family's test limit)")
    parser.add_argument("--env-config", type=json_object, default={},
                        help="family overrides as JSON, e.g. '{\"horizon\": 40}'")
    parser.add_argument("--json", type=abs_path, default=None, metavar="FILE",
                        help="write a JSON report to FILE ('-': stdout; default: none)")
    _add_ray_args(parser)
    _add_adapt_args(parser, "--test-tasks", "--adapt-steps")
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
              **cost_limits(config, args.cost_limit)}
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
    _check_counts(args, iterations=1, tasks=0, steps=0, num_env_runners=0)
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
    _add_ray_args(parser)
    _add_adapt_args(parser, "--tasks", "--steps", min_tasks=1)
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
                                                     default=_json_default) + "\n")
    return saved


def run_adapt(args: argparse.Namespace) -> int:
    _check_counts(args, tasks=1, steps=0)
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
            tasks = _test_tasks(family, args, args.split)
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
        _write_json(report, args.json)
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
