"""The CLI's input checks (parser-level, before Ray), help text, --version, and the Tune
registration that ``import metacpo_rllib`` provides. Fast: no Ray instance is started."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metacpo_rllib import cli, console
from metacpo_rllib.experiments import commands

REPO = Path(__file__).resolve().parents[1]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("argv,flag", [
    (["train", "--family", "PointNav", "--cost-limit", "-3"], "--cost-limit"),
    (["train", "--family", "PointNav", "--train-cost-limit", "nan"], "--train-cost-limit"),
    (["train", "--family", "PointNav", "--test-cost-limit", "-1"], "--test-cost-limit"),
    (["train", "--family", "PointNav", "--iterations", "0"], "--iterations"),
    (["train", "--family", "PointNav", "--inner-delta", "0"], "--inner-delta"),
    (["train", "--family", "PointNav", "--trust-region-delta", "nan"], "--trust-region-delta"),
    (["train", "--family", "PointNav", "--adaptation-delta", "0"], "--adaptation-delta"),
    (["train", "--family", "PointNav", "--adaptation-cost-window", "-1"],
     "--adaptation-cost-window"),
    (["train", "--family", "PointNav", "--adaptation-cost-free-scale", "1.5"],
     "--adaptation-cost-free-scale"),
    (["train", "--family", "PointNav", "--adaptation-recovery-scale", "0.5"],
     "--adaptation-recovery-scale"),
    (["train", "--family", "PointNav", "--eval-interval", "-1"], "--eval-interval"),
    (["train", "--family", "PointNav", "--iterations", "2.5"], "--iterations"),
    (["train", "--family", "PointNav", "--num-env-runners", "-1"], "--num-env-runners"),
    (["train", "--family", "PointNav", "--seed", "-1"], "--seed"),
    (["train", "--family", "PointNav", "--tasks-per-iteration", "0"], "--tasks-per-iteration"),
    (["train", "--family", "PointNav", "--num-cpus", "0"], "--num-cpus"),
    (["train", "--family", "PointNav", "--adapt-episodes", "0"], "--adapt-episodes"),
    (["train", "--family", "PointNav", "--env-config", "[1]"], "--env-config"),
    (["train", "--family", "PointNav", "--env-config", "{horizon"], "--env-config"),
    (["adapt", "--checkpoint", "x", "--tasks", "0"], "--tasks"),
    (["adapt", "--checkpoint", "x", "--cost-limit", "-1"], "--cost-limit"),
    (["compare", "--family", "PointNav", "--iterations", "0"], "--iterations"),
    (["compare", "--family", "PointNav", "--seeds", "0", "-2"], "--seeds"),
    (["compare", "--family", "PointNav", "--max-concurrent", "0"], "--max-concurrent"),
    (["compare", "--family", "PointNav", "--test-cost-limit", "-0.5"], "--test-cost-limit"),
    (["sweep", "x.yaml", "--num-samples", "0"], "--num-samples"),
    (["ui", "--port", "70000"], "--port"),
])
def test_bad_numbers_are_rejected_by_the_parser(argv, flag, capsys) -> None:
    assert cli.main(argv) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"metacpo {argv[0]}: error: argument {flag}"), line


def test_train_cost_limit_is_the_deprecated_name_of_test_cost_limit(capsys) -> None:
    """``train --cost-limit`` (the held-out tasks' limit) still works, under the clear name
    ``--test-cost-limit``, and says so once on stderr; the new name says nothing."""
    parser = cli.build_parser()
    old = parser.parse_args(["train", "--family", "PointNav", "--cost-limit", "5"])
    assert old.test_cost_limit == 5.0 and not hasattr(old, "cost_limit")
    assert _one_line_error(capsys) == ("metacpo train: warning: --cost-limit is deprecated, "
                                       "use --test-cost-limit (the same value)")
    new = parser.parse_args(["train", "--family", "PointNav", "--test-cost-limit", "4",
                             "--train-cost-limit", "9"])
    assert (new.test_cost_limit, new.train_cost_limit) == (4.0, 9.0)
    assert capsys.readouterr().err == ""
    assert cli.build_config(new).train_cost_limit == 9.0  # the training tasks' limit


def test_cost_limit_error_comes_in_seconds_without_ray() -> None:
    """The issue's example, as a user runs it: one line, exit 2, no Ray imported."""
    code = ("import sys; from metacpo_rllib import cli; "
            "rc = cli.main(['train', '--family', 'PointCircle', '--cost-limit', '-3']); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("metacpo train: error: argument --cost-limit: expected a "
                                   "number >= 0, got -3 (see metacpo train --help)")
    assert proc.stdout == ""
    assert elapsed < 10, elapsed


def test_missing_checkpoint_is_one_line_before_ray(tmp_path, capsys) -> None:
    code = ("import sys; from metacpo_rllib import cli; "
            "rc = cli.main(['adapt', '--checkpoint', 'no/such/dir']); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"metacpo adapt: error: --checkpoint: "
                                   f"{tmp_path / 'no/such/dir'} does not exist")
    # a folder that is not a checkpoint
    (tmp_path / "empty").mkdir()
    assert cli.main(["adapt", "--checkpoint", str(tmp_path / "empty")]) == 2
    assert "not an RLlib checkpoint" in _one_line_error(capsys)


def test_unwritable_checkpoint_dir_and_json_fail_before_training(tmp_path, capsys) -> None:
    import ray

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main(["train", "--family", "PointNav", "--checkpoint-dir",
                     str(blocker / "ckpt")]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("metacpo train: error: --checkpoint-dir: cannot create"), line
    assert cli.main(["train", "--family", "PointNav", "--checkpoint-dir", str(blocker)]) == 2
    assert "exists and is not a directory" in _one_line_error(capsys)
    # /proc refuses new files even to root (os.access alone would say yes)
    assert cli.main(["train", "--family", "PointNav", "--checkpoint-dir",
                     "/proc/metacpo-ckpt"]) == 2
    assert "--checkpoint-dir: cannot write to /proc" in _one_line_error(capsys)
    assert cli.main(["train", "--family", "PointNav", "--json", str(blocker / "r.json")]) == 2
    assert "--json" in _one_line_error(capsys)
    assert cli.main(["train", "--family", "PointNav", "--json", str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert not ray.is_initialized()
    assert not (blocker.parent / "ckpt").exists()  # the check creates nothing


def test_user_paths_are_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--family", "PointNav", "--checkpoint-dir", "rel/ckpt",
                              "--json", "out.json"])
    assert args.checkpoint_dir == str(tmp_path / "rel/ckpt")
    assert args.json == str(tmp_path / "out.json")
    assert parser.parse_args(["train", "--family", "PointNav", "--json", "-"]).json == "-"
    args = parser.parse_args(["adapt", "--checkpoint", "~/ckpt"])
    assert args.checkpoint == os.path.expanduser("~/ckpt")
    args = parser.parse_args(["compare", "--family", "PointNav", "--storage-path", "ray",
                              "--out", "report"])
    assert args.storage_path == str(tmp_path / "ray") and args.out == str(tmp_path / "report")
    args = parser.parse_args(["sweep", "f.yaml", "--storage-path", "s3://bucket/x"])
    assert args.storage_path == "s3://bucket/x"


def test_compare_iterations_are_taken_as_given() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["compare", "--family", "PointNav", "--iterations", "1",
                              "--seeds", "4", "--test-tasks", "0", "--adapt-steps", "0"])
    spec = commands.compare_spec_from_args(args)
    assert spec.iterations == 1 and spec.grid["seed"] == [4]
    assert spec.adaptation.test_tasks == 0 and spec.adaptation.adapt_steps == 0
    spec = commands.compare_spec_from_args(parser.parse_args(["compare", "--family",
                                                              "PointNav"]))
    assert spec.iterations == 3 and spec.grid["seed"] == [0, 1, 2]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_flag_has_help_and_shows_its_default() -> None:
    parser = cli.build_parser()
    missing = []
    for name, sub in _subparsers(parser).items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            shown = formatter._expand_help(action) if text else ""
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not text:
                missing.append(f"{flag}: no help")
            elif (action.option_strings and action.nargs != 0 and not action.required
                  and "default" not in shown):
                missing.append(f"{flag}: no default shown")
    assert not missing, missing
    help_text = _subparsers(parser)["train"].format_help()
    assert "training (meta-)iterations (default: 3)" in " ".join(help_text.split())


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("metacpo 0.1.0 (ray 2.60.0, torch "), out


def test_known_ray_noise_is_dropped_and_the_rest_kept(caplog) -> None:
    import logging

    console.quiet_ray_noise()
    console.quiet_ray_noise()  # idempotent: one filter per logger
    assert sum(isinstance(f, console._DropKnownNoise) for f in
               logging.getLogger("ray.tune.utils.util").filters) == 1
    with caplog.at_level(logging.WARNING):
        logging.getLogger("ray.rllib.algorithms.algorithm_config").warning(
            "You are running MetaCPO on the new API stack! This is the new default ...")
        logging.getLogger("ray._common.deprecation").warning(
            "DeprecationWarning: `RLModule(config=[RLModuleConfig object])` has been "
            "deprecated.")
        logging.getLogger("ray.tune.utils.util").warning(
            "Install gputil for GPU system monitoring.")
        logging.getLogger("ray.tune.utils.util").warning("Install psutil to monitor ...")
        logging.getLogger("ray._common.deprecation").warning(
            "DeprecationWarning: `something_else` has been deprecated.")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Install psutil to monitor ...",
                        "DeprecationWarning: `something_else` has been deprecated."]


_TUNE_CHECK = """
import sys, time
{before}
import metacpo_rllib
assert "metacpo_rllib.rllib" not in sys.modules
{assert_no_ray}
from ray.tune.registry import get_trainable_cls
names = [get_trainable_cls(n).__name__ for n in ("MetaCPO", "MetaTRPO", "CPO", "TRPO")]
print(" ".join(names))
"""


@pytest.mark.parametrize("ray_first", [False, True])
def test_import_metacpo_rllib_lets_tune_find_the_algorithms(ray_first) -> None:
    """No Ray import at ``import metacpo_rllib``; Tune finds the names on first lookup,
    whether ``ray.tune`` was imported before or after the package."""
    code = _TUNE_CHECK.format(
        before="import ray.tune" if ray_first else "",
        assert_no_ray="" if ray_first else
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["MetaCPO", "MetaTRPO", "CPO", "TRPO"]


def test_import_metacpo_rllib_stays_light() -> None:
    """The hook costs no Ray import: the package imports in well under a second."""
    code = ("import time; t = time.perf_counter(); import metacpo_rllib; "
            "print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 0.5, proc.stdout
