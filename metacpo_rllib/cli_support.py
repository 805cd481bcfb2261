"""What the ``metacpo`` subcommands share: the command registry, argument types and checks
(one line per bad value, before Ray starts), the embedded Ray, the report tables and JSON.

Command modules (``cli``, ``experiments.commands``, ``evaluate``) import from here; nothing
here imports them."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional

from metacpo_rllib import console
from metacpo_rllib.algorithms import CLI_NAMES

ALGO_NAMES = CLI_NAMES
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


def number(low: Optional[float] = None, high: Optional[float] = None,
           exclusive_low: bool = False) -> Callable[[str], float]:
    """A finite float flag in ``[low, high]`` (``(low, high]`` with ``exclusive_low``)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if exclusive_low else value < low)
        if too_low or (high is not None and value > high):
            above = f"> {low:g}" if exclusive_low else f">= {low:g}"
            bound = (above if high is None else f"<= {high:g}" if low is None
                     else f"in {'(' if exclusive_low else '['}{low:g}, {high:g}]")
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {value:g}")
        return value
    convert.__name__ = "number"
    return convert


class DeprecatedFlag(argparse.Action):
    """An old flag name that keeps working: it stores into the new flag's ``dest`` and says
    on stderr which flag replaces it (``parser.add_argument("--old", action=DeprecatedFlag,
    dest=..., new="--new", type=...)``)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("help", f"deprecated: the old name of {new} (same value and default)")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new} "
              "(the same value)", file=sys.stderr)
        setattr(namespace, self.dest, values)


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


def check_counts(args: argparse.Namespace, **minimums: int) -> None:
    for name, low in minimums.items():
        value = getattr(args, name)
        if value < low:
            flag = getattr(args, "flag_names", {}).get(name, "--" + name.replace("_", "-"))
            raise UsageError(f"{flag}: expected an integer >= {low}, got {value}")
    episodes = getattr(args, "adapt_episodes", None)
    if episodes is not None and episodes < 1:
        raise UsageError(f"--adapt-episodes: expected an integer >= 1, got {episodes}")


#: Per-iteration sampling defaults of the CLI: the config's own (4 tasks x 8 episodes), written
#: out so that argument checks need not import Ray (tests/test_cli_defaults.py keeps them equal).
#: On PointCircle 4 episodes per task left CPO's and Meta-CPO's training cost above its limit on
#: average and 8 (with the longer outer recovery and θ's own cost constrained) did not
#: (docs/RESULTS.md, "Training controls"); 2 did not keep the limit either ("Batch size").
SAMPLING_DEFAULTS: dict[str, int] = {"tasks_per_iteration": 4, "episodes_per_task": 8}


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
    temp_dir = None
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        where = f"joined the cluster at {address}"
    else:
        temp_dir = tempfile.mkdtemp(prefix="metacpo-ray-", dir="/tmp")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _temp_dir=temp_dir, log_to_driver=False, configure_logging=False)
        where = f"embedded local instance ({num_cpus} CPUs)"
    console.reclaim_signals()
    print(f"ray: {where}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def fmt_value(value: float, width: int = 8) -> str:
    return f"{'nan':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.2f}"


def adaptation_table(report: dict[str, Any]) -> str:
    """Per held-out task and adaptation step: ``return / cost`` (``*`` = over the limit);
    with ``adaptation_backtracks``, the batches sampled for the step into each column's
    policy and rejected (over tasks)."""
    steps = report["steps"]
    header = f"{'task':>9} {'limit':>6} " + " ".join(f"{'step ' + str(s):>19}" for s in steps)
    lines = [header]

    def cell(ret: float, cost: float, limit: float) -> str:
        flag = "*" if not math.isnan(cost) and cost > limit else " "
        return f"{fmt_value(ret)} / {fmt_value(cost, 6)}{flag}"

    for task in report["tasks"]:
        cells = [cell(r, c, task["cost_limit"]) for r, c in zip(task["return"], task["cost"])]
        lines.append(f"{task['task_id']:>9} {task['cost_limit']:>6.1f} " + " ".join(cells))
    means = [f"{fmt_value(r)} / {fmt_value(c, 6)} " for r, c in zip(report["mean_return"],
                                                          report["mean_cost"])]
    lines.append(f"{'mean':>9} {'':>6} " + " ".join(means))
    lines.append(f"{'violation':>9} {'':>6} "
                 + " ".join(f"{fmt_value(v, 17)}  " for v in report["violation_rate"]))
    if "rejections" in report:  # adaptation_backtracks: batches rejected per step
        lines.append(f"{'rejected':>9} {'':>6} "
                     + " ".join(f"{fmt_value(v, 17)}  " for v in [0.0, *report["rejections"]]))
    if report.get("eval"):
        size = f"{report.get('batch_episodes', '?')} episodes per task and step"
        if report.get("first_batch_episodes"):
            size = f"{report['first_batch_episodes']} episodes per task at step 0, then {size}"
        lines[0:0] = [f"learning batches ({size}: what each step learns from)"]
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
            cells.append(f"{fmt_value(r)} / {fmt_value(c, 6)} ≤ {fmt_value(u, 6)}{flag}")
        lines.append(f"{task['task_id']:>9} {h:>6.1f} " + " ".join(cells))
    lines.append(f"{'mean':>9} {'':>6} " + " ".join(
        f"{fmt_value(r)} / {fmt_value(c, 6)} ≤ {fmt_value(u, 6)} "
        for r, c, u in zip(ev["mean_return"], ev["mean_cost"], ev["mean_cost_ucb"])))
    for name, rates in (("within", ev["within_limit_rate"]), ("certified", ev["certified_rate"])):
        lines.append(f"{name:>9} {'':>6} " + " ".join(f"{fmt_value(v, 25)}  " for v in rates))
    return "\n".join([*lines, verdict(report, key)])


def verdict(report: dict[str, Any], key: str = "eval") -> str:
    """One line: after which adaptation steps every task's evaluation mean cost was within
    its limit, and the return from step 0 to the last step."""
    tasks, steps = report["tasks"], report["steps"]
    inside = [sum(t[key]["cost"][s] <= t["cost_limit"] for t in tasks) for s in range(len(steps))]
    missed = [str(steps[s]) for s in range(1, len(steps)) if inside[s] < len(tasks)]
    returns = report[key]["mean_return"]
    held = ("within the limit on every task at every adaptation step" if not missed
            else f"over the limit on some task after step(s) {', '.join(missed)}"
            f" ({min(inside[1:] or inside)}/{len(tasks)} tasks within at the worst step)")
    return (f"verdict: {held}; return {fmt_value(returns[0], 0).strip()} -> "
            f"{fmt_value(returns[-1], 0).strip()} (evaluation episodes)")


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(report: dict[str, Any], path: Optional[str]) -> None:
    """The report as JSON: to ``path``, or on stdout for ``-`` (only then)."""
    text = json.dumps(report, indent=2, default=json_default)
    if path in (None, "-"):
        print(text)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
        print(f"wrote {path}", file=sys.stderr)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """``--tasks-per-iteration`` and ``--episodes-per-task`` (train and compare)."""
    parser.add_argument("--tasks-per-iteration", type=count(1), default=None,
                        help="training tasks per iteration (default 4)")
    parser.add_argument("--episodes-per-task", type=count(1), default=None,
                        help="episodes per task and sampling round (default 8)")


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-cpus", type=count(1), default=2,
                        help="CPUs of the embedded local Ray")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster (default: $RAY_ADDRESS if set, else an "
                             "embedded local Ray)")


def add_adapt_args(parser: argparse.ArgumentParser, tasks_flag: str, steps_flag: str,
                    min_tasks: int = 0) -> None:
    parser.add_argument(tasks_flag, dest="tasks", type=count(min_tasks), default=2,
                        help="number of held-out tasks" + (" (0: no adaptation)"
                                                           if min_tasks == 0 else ""))
    parser.add_argument(steps_flag, dest="steps", type=count(0), default=1,
                        help="adaptation steps per task (step 0 is the policy itself)")
    parser.add_argument("--adapt-episodes", type=count(1), default=None,
                        help="episodes per task in each adaptation step's learning batch "
                             "(default: the config's adaptation_episodes_per_task, else its "
                             "episodes per task)")
    parser.add_argument("--eval-episodes", type=count(0), default=20,
                        help="fresh evaluation episodes per task and step, apart from the "
                             "learning batches (0: none)")
    parser.add_argument("--task-seed", type=count(0), default=12345,
                        help="seed of the held-out task sample")
    parser.set_defaults(flag_names={"tasks": tasks_flag, "steps": steps_flag})
