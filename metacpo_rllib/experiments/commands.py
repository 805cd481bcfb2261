"""The ``metacpo sweep`` / ``compare`` / ``ui`` subcommands; ``register()`` adds them to the CLI."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from metacpo_rllib import cli_support
from metacpo_rllib.cli_support import (UsageError, abs_path, add_sampling_args,
                                       check_writable_dir, check_writable_file, count,
                                       SAMPLING_DEFAULTS, json_object, local_ray, number)
from metacpo_rllib.experiments import tracking

_MLFLOW_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded "
                f"store {tracking.DEFAULT_TRACKING_URI} with artifacts in ./mlruns)")


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    """``--mlflow-uri`` and ``--mlflow-experiment`` (also meant for ``metacpo train``)."""
    parser.add_argument("--mlflow-uri", default=None, help=_MLFLOW_HELP)
    parser.add_argument("--mlflow-experiment", default=None,
                        help="MLflow experiment name (default: per command)")


def _ray_args(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--storage-path", type=abs_path, default=None,
                        help="Tune results and checkpoints: a folder (made absolute) or a "
                             "URI such as s3://bucket/path (default ./ray_results)")
    parser.add_argument("--num-cpus", type=count(1), default=os.cpu_count() or 1,
                        help="CPUs of the embedded local Ray (default: all of this "
                             "machine's, %(default)s); trials run as many at a time as fit")
    parser.add_argument("--quiet", action="store_true", help="no Tune progress tables")


def _check_outputs(args: argparse.Namespace, files: Sequence[str] = (),
                   folders: Sequence[str] = ()) -> None:
    """The output paths among ``args`` can be written (before Ray starts)."""

    for name in files:
        check_writable_file(getattr(args, name), "--" + name.replace("_", "-"))
    for name in folders:
        path = getattr(args, name)
        if path and "://" not in path:
            check_writable_dir(path, "--" + name.replace("_", "-"))


def _usage(err: Exception) -> Exception:

    return UsageError(str(err))


# -- sweep -------------------------------------------------------------------------------------
def configure_sweep(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("file", help="a sweep spec, e.g. tune_configs/smoke_pointnav.yaml")
    parser.add_argument("--num-samples", type=count(1), default=None,
                        help="repeats of every grid point (default: the file's "
                             "tune.num_samples)")
    parser.add_argument("--max-concurrent", type=count(1), default=None,
                        help="trials at a time (default: the file's tune.max_concurrent)")
    parser.add_argument("--iterations", type=count(1), default=None,
                        help="training iterations per trial (default: the file's "
                             "iterations)")
    parser.add_argument("--json", type=abs_path, default=None, metavar="PATH",
                        help="also write the per-trial rows (with the per-step adaptation "
                        "means), the spec and provenance to this JSON file (default: none)")
    add_tracking_args(parser)
    _ray_args(parser)


def run_sweep_command(args: argparse.Namespace) -> int:
    """Validate the file (one error naming the key, before Ray starts), then run it."""
    from metacpo_rllib.experiments.spec import SpecError, load_spec
    from metacpo_rllib.experiments.sweep import format_rows, run_sweep, trial_rows

    _check_outputs(args, files=("json",), folders=("storage_path",))
    try:
        spec = load_spec(args.file, {"tune.num_samples": args.num_samples,
                                     "tune.max_concurrent": args.max_concurrent,
                                     "iterations": args.iterations,
                                     "mlflow.experiment": args.mlflow_experiment})
    except SpecError as err:
        raise _usage(err) from None
    uri = tracking.resolve_tracking_uri(args.mlflow_uri)
    print(f"sweep {spec.name}: {', '.join(spec.algorithms)} on {spec.family}, "
          f"{spec.num_trials()} trial(s) per algorithm x {spec.iterations} iterations; "
          f"MLflow experiment {spec.experiment_name!r} at {uri}", flush=True)
    with local_ray(max(args.num_cpus, 1)):
        grids = run_sweep(spec, tracking_uri=uri, storage_path=args.storage_path,
                          verbose=0 if args.quiet else 1)
    rows = trial_rows(grids, spec)
    print(format_rows(rows))
    print(best_line(grids.result_grid))
    if args.json:
        _write_sweep_json(args.json, spec, rows, args.command_line)
    print(_where(spec.experiment_name, uri))
    return 1 if any(r["error"] for r in rows) else 0


def best_line(result_grid: Any) -> str:
    """The best trial by the sweep's metric (see ``sweep.METRIC``), or why there is none."""
    from metacpo_rllib.experiments.sweep import METRIC, MODE

    try:
        best = result_grid.get_best_result()
    except RuntimeError as err:  # no trial reported the metric
        return f"best trial: none ({err})"
    value = best.metrics.get("metacpo", {}).get(METRIC.split("/", 1)[1])
    return f"best trial ({METRIC}, {MODE}): {Path(best.path).name} = {value:.4g}"


def _write_sweep_json(path: str, spec: Any, rows: list, command_line: str) -> None:
    import dataclasses

    from metacpo_rllib import provenance

    data = {"name": spec.name, "family": spec.family, "algorithms": spec.algorithms,
            "iterations": spec.iterations, "training": spec.training, "grid": spec.grid,
            "env_config": spec.env_config, "adaptation": dataclasses.asdict(spec.adaptation),
            "evaluation": spec.evaluation,
            "rows": rows,
            "provenance": {"commit": tracking.git_commit(), "machine": provenance.machine(),
                           "command": command_line,
                           "finished_utc": provenance.utc_now()}}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=tracking.plain) + "\n")
    print(f"wrote {out}")


#: The MLflow UI's runs page of an experiment, in its "Model training" view (MLflow 3's UI
#: otherwise opens in the GenAI view its browser last used).
RUNS_PAGE = "{ui}/#/experiments/{id}/runs?workflowType=machine_learning"


def _where(experiment: str, uri: str) -> str:
    """Where the runs went, with the link to their runs page in the MLflow UI."""
    served = uri.startswith(("http://", "https://"))
    hint = "" if served else "; browse it with `metacpo ui`"
    try:
        from mlflow.tracking import MlflowClient

        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 (an unreachable store: no link)
        found = None
    if found is not None:
        ui = uri.rstrip("/") if served else "http://127.0.0.1:5000"
        hint += f"; runs: {RUNS_PAGE.format(ui=ui, id=found.experiment_id)}"
    return f"MLflow experiment {experiment!r} at {uri}{hint}"


# -- compare -----------------------------------------------------------------------------------
def configure_compare(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--family", default=None,
                        help="task family, e.g. PointCircle (default: --config's)")
    parser.add_argument("--config", default=None,
                        help="take the settings from a spec file (e.g. tune_configs/"
                             "pointcircle_compare.yaml); the flags below override it "
                             "(default: none)")
    parser.add_argument("--seeds", type=count(0), nargs="+", default=None,
                        help="training seeds (default 0 1 2)")
    parser.add_argument("--iterations", type=count(1), default=None,
                        help="training iterations per run (default 3)")
    parser.add_argument("--test-tasks", type=count(0), default=None,
                        help="held-out test tasks (default 2)")
    parser.add_argument("--adapt-steps", type=count(0), default=None,
                        help="adaptation steps per test task (default 1)")
    parser.add_argument("--eval-episodes", type=count(0), default=None,
                        help="fresh evaluation episodes per test task and step, apart from "
                             "the learning batches (default 20; 0: none)")
    parser.add_argument("--split", default=None, choices=("test", "test_tight"),
                        help="held-out split to adapt on: test (the paper's) or test_tight "
                             "(tighter than training) (default: test)")
    parser.add_argument("--eval-interval", type=count(1), default=None,
                        help="evaluate θ on fixed training tasks every N iterations (does "
                             "training meet its limit?; default: off)")
    add_sampling_args(parser)
    parser.add_argument("--train-cost-limit", type=number(0), default=None,
                        help="training tasks' limit (default: the family's train limit)")
    parser.add_argument("--test-cost-limit", type=number(0), default=None,
                        help="test tasks' limit (default: the family's tighter test limit)")
    parser.add_argument("--env-config", type=json_object, default=None,
                        help="family overrides as JSON, e.g. '{\"horizon\": 40}' "
                             "(default: none)")
    parser.add_argument("--max-concurrent", type=count(1), default=None,
                        help="trials at a time (default: as many as the CPUs allow)")
    parser.add_argument("--out", type=abs_path, default=None,
                        help="report folder (default ./compare_<family>)")
    add_tracking_args(parser)
    _ray_args(parser)


def compare_spec_from_args(args: argparse.Namespace) -> Any:
    """The comparison spec: ``--config`` (or the per-family defaults) plus the flags."""
    from metacpo_rllib.experiments.compare import compare_spec
    from metacpo_rllib.experiments.spec import SpecError, load_spec

    training = {"tasks_per_iteration": args.tasks_per_iteration,
                "episodes_per_task": args.episodes_per_task,
                "train_cost_limit": args.train_cost_limit}
    if args.config:
        overrides = {"family": args.family, "iterations": args.iterations,
                     "grid.seed": args.seeds, "env_config": args.env_config,
                     "adaptation.test_tasks": args.test_tasks,
                     "adaptation.adapt_steps": args.adapt_steps,
                     "adaptation.eval_episodes": args.eval_episodes,
                     "adaptation.split": args.split,
                     "evaluation.evaluation_interval": args.eval_interval,
                     "adaptation.cost_limit": args.test_cost_limit,
                     "tune.max_concurrent": args.max_concurrent,
                     "mlflow.experiment": args.mlflow_experiment,
                     **{f"training.{k}": v for k, v in training.items()}}
        return load_spec(args.config, overrides)
    if args.family is None:
        raise SpecError("--family: required (or --config FILE)")
    training = {**SAMPLING_DEFAULTS,
                **{k: v for k, v in training.items() if v is not None}}
    spec = compare_spec(args.family, seeds=(0, 1, 2) if args.seeds is None else args.seeds,
                        iterations=3 if args.iterations is None else args.iterations,
                        test_tasks=2 if args.test_tasks is None else args.test_tasks,
                        adapt_steps=1 if args.adapt_steps is None else args.adapt_steps,
                        training=training, env_config=args.env_config,
                        test_cost_limit=args.test_cost_limit,
                        max_concurrent=args.max_concurrent,
                        eval_episodes=20 if args.eval_episodes is None else args.eval_episodes,
                        split=args.split or "test",
                        evaluation=({"evaluation_interval": args.eval_interval}
                                    if args.eval_interval else None))
    spec.experiment = args.mlflow_experiment
    return spec


def run_compare_command(args: argparse.Namespace) -> int:
    from metacpo_rllib.experiments.compare import run_compare
    from metacpo_rllib.experiments.spec import SpecError

    try:
        spec = compare_spec_from_args(args)
    except SpecError as err:
        raise _usage(err) from None
    uri = tracking.resolve_tracking_uri(args.mlflow_uri)
    out = args.out or os.path.abspath(f"compare_{spec.family}")
    args.out = out
    _check_outputs(args, folders=("out", "storage_path"))
    print(f"compare {', '.join(spec.algorithms)} on {spec.family}: seeds "
          f"{spec.grid.get('seed')}, {spec.iterations} iterations, then "
          f"{spec.adaptation.adapt_steps} adaptation step(s) on "
          f"{spec.adaptation.test_tasks} test tasks; MLflow experiment "
          f"{spec.experiment_name!r} at {uri}", flush=True)
    with local_ray(max(args.num_cpus, 1)):
        result = run_compare(spec, out, tracking_uri=uri, storage_path=args.storage_path,
                             verbose=0 if args.quiet else 1, command_line=args.command_line)
    print(Path(result["files"]["table"]).read_text())
    for path in result["files"].values():
        print(f"wrote {path}")
    print(_where(spec.experiment_name, uri))
    return 0


# -- ui --------------------------------------------------------------------------------------
def configure_ui(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--mlflow-uri", default=None,
                        help="backend store (default: $MLFLOW_TRACKING_URI, else "
                             f"{tracking.DEFAULT_TRACKING_URI})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=count(1, 65535), default=5000, help="port to serve on")


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for a store (one worker, light)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        root = Path(uri[len("sqlite:///"):]).resolve().parent / tracking.ARTIFACT_DIR
        cmd += ["--default-artifact-root", root.as_uri()]
    return cmd


def run_ui(args: argparse.Namespace) -> int:
    uri = tracking.resolve_tracking_uri(args.mlflow_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server: open it in a browser (it serves the UI)")
        return 0
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)",
          flush=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Its own process group: the server and every worker it starts are stopped together,
    # whether this command ends by Ctrl-C, SIGTERM (console.Terminated) or the server's exit.
    server = subprocess.Popen(ui_command(uri, args.host, args.port), env=env,
                              start_new_session=True)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process_group(server)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux ``/proc``; elsewhere
    [pgid] while the group exists)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_process_group(server: "subprocess.Popen[Any]", timeout: float = 10.0) -> None:
    """SIGTERM to the whole process group led by ``server`` (started with
    ``start_new_session``), SIGKILL to what is left after ``timeout`` seconds."""
    import signal
    import time

    pgid = server.pid
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if server.poll() is not None and not _group_members(pgid):
                return
            time.sleep(0.1)
    server.poll()


# -- registration ------------------------------------------------------------------------------
def register(add_command: Optional[Callable[..., None]] = None) -> None:
    """Add ``sweep``, ``compare`` and ``ui`` to the ``metacpo`` CLI (``cli_support.add_command``
    unless another registrar is given)."""
    add_command = add_command or cli_support.add_command
    add_command("sweep", "run a Tune sweep from a YAML spec (tune_configs/), logged to MLflow",
                configure_sweep, run_sweep_command)
    add_command("compare", "train Meta-CPO, Meta-TRPO, CPO and TRPO on one family (same "
                "seeds and test tasks), adapt, and write a comparison report",
                configure_compare, run_compare_command)
    add_command("ui", "start the MLflow UI on the embedded store (127.0.0.1)",
                configure_ui, run_ui)
