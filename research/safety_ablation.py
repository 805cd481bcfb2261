"""Ablation of the safety corrections, observation filter, critics and adaptation settings.

Asks whether CPO and Meta-CPO hold their cost limits with each switch on and off.

Trains each (variant, algorithm, seed) on the family's train split at the training limit,
evaluates θ on fixed training tasks (evaluation episodes, not the learning batches), then
adapts on held-out tasks of the ``test`` and ``test_tight`` splits at the test limit and
scores every adaptation step on its own evaluation episodes (common random numbers).
Results are written to ``--out`` after every run; runs already there are skipped, so an
interrupted sweep resumes where it stopped.

    python research/safety_ablation.py --family PointCircle --iterations 15 \
        --variants baseline all --algos meta-cpo cpo --seeds 0 1 2 \
        --out research/results/safety_ablation_pointcircle.json

The observation filter and the critics on top of the corrections (5 adaptation steps), and the
corrections trained for 30 iterations:

    python research/safety_ablation.py --family PointCircle --iterations 15 \
        --algos meta-cpo cpo --seeds 0 1 2 --adapt-steps 5 --eval-episodes 10 \
        --variants all all_obsnorm all_critics all_critics_priv \
        --out research/results/input_ablation_pointcircle.json
    python research/safety_ablation.py --family PointCircle --iterations 30 \
        --algos cpo meta-cpo --seeds 0 1 2 --adapt-steps 5 --eval-episodes 10 \
        --variants all --out research/results/long_training_pointcircle.json

Test-time adaptation settings (``--adapt-settings``), each adapting the same trained θ kept
under ``--checkpoints`` (one folder per variant, algorithm, seed, iteration count and
training limit if set; θ and the sampler state are restored, so a setting that changes
nothing reproduces the run that trained it exactly). Settings name every field, so the
commands do not depend on the defaults (research/results/adaptation_settings_pointcircle.json
holds them all):

    python research/safety_ablation.py --family PointCircle --iterations 30 \
        --seeds 0 1 2 --adapt-steps 5 --eval-episodes 10 --variants all \
        --checkpoints CKPT --algos meta-cpo --adapt-settings win0+free1+rec1 \
        win16+free0.5+rec3 win16+free0.25+rec3 ... --out OUT

A longer training run goes on from a shorter one kept under ``--checkpoints``
(``--continue-from M``: θ, its RNGs and iteration count restored, the last N − M iterations
run), e.g. CarCircleHazard's dense-layout θ from 100 to 200 iterations
(research/results/carcirclehazard_dense_training_200it.json):

    python research/safety_ablation.py --family CarCircleHazard --iterations 200 \
        --continue-from 100 --checkpoints CKPT ... --out OUT

With ``--continue-env-config`` the shorter run was trained on another task distribution: a
curriculum, e.g. 50 iterations on the family's own layouts, then 50 on denser hazards
(research/results/carcirclehazard_curriculum.json):

    python research/safety_ablation.py --family CarCircleHazard --iterations 100 \
        --continue-from 50 --continue-env-config '{}' \
        --env-config '{"ranges": {"train": {"num_hazards": [4, 11]}}}' ... --out OUT

With ``--continue-from`` equal to ``--iterations`` no iteration is added: θ trained on
``--continue-env-config`` is adapted and evaluated on this run's ``--env-config``, e.g.
PointButton's θ trained with a boundary cost, adapted on the family without it
(research/results/pointbutton_boundary_plain.json):

    python research/safety_ablation.py --family PointButton --iterations 60 \
        --continue-from 60 --continue-env-config '{"boundary": 0.2}' --env-config '{}' ...

θ trained at a lower limit (``--train-cost-limit``, the family's by default), adapted at the
family's test limit (research/results/train_limit_pointcircle.json):

    python research/safety_ablation.py --family PointCircle --iterations 30 \
        --seeds 0 1 2 --adapt-steps 5 --eval-episodes 10 --test-tasks 12 \
        --train-eval-interval 5 --algos meta-cpo --variants all --train-cost-limit 5 \
        --out OUT

θ trained on walls as close as ``test_tight``'s (the family override ``ranges``: PointCircle
training factor U(0.28, 0.75) instead of U(0.55, 0.75)), adapted with the defaults on 12
held-out tasks per split (research/results/train_walls_pointcircle.json):

    python research/safety_ablation.py --family PointCircle --iterations 30 \
        --seeds 0 1 2 --adapt-steps 5 --eval-episodes 10 --test-tasks 12 \
        --train-eval-interval 5 --algos meta-cpo --variants all \
        --env-config '{"ranges": {"train": {"factor": [0.28, 0.75]}}}' --out OUT

Training's inner steps shortened on batches without cost (``inner_cost_free_scale``), also with
θ's own cost as a second outer constraint (``theta_cost_constraint``),
adapted on 12 held-out tasks per split (research/results/inner_radius_pointcircle.json):

    python research/safety_ablation.py --family PointCircle --iterations 30 \
        --seeds 0 1 2 --adapt-steps 5 --eval-episodes 10 --test-tasks 12 \
        --train-eval-interval 5 --algos meta-cpo \
        --variants all_inner_free all_inner_free05 all_inner_free_theta \
        --out OUT

Controls of training's outer step meant to end training within its limit (the J_C
window, the setpoint margin, the annealed radius, the longer recovery, twice the batch),
training only, θ evaluated every 5 iterations; each command wrote its own file, merged
with ``--merge`` (research/results/training_controls_pointcircle.json holds the commands):

    python research/safety_ablation.py --family PointCircle --iterations 30 \
        --seeds 0 1 2 3 4 5 6 7 --train-eval-interval 5 --algos cpo --splits \
        --variants all all_outer_rec3 --checkpoints CKPT --out A.json
    python research/safety_ablation.py --merge A.json B.json ... --out MERGED.json

The training defaults with and without the cost-free inner factor, each θ adapted with a
quarter and an eighth of the radius on cost-free batches, on seeds 3–5 (its commands
and the merge are in the file's settings; research/results/return_settings_seeds_pointcircle.json):

    python research/safety_ablation.py --family PointCircle --iterations 30 \
        --episodes-per-task 8 --seeds 3 4 5 --adapt-steps 5 --eval-episodes 20 \
        --test-tasks 6 --train-eval-interval 30 --algos meta-cpo \
        --variants all_eps8_theta_outer_rec3_share_violating_inner_free \
        --adapt-settings ad0.003 ad0.003+free0.125 --checkpoints CKPT --out OUT

CPO's training steps, each with its calibration entry (θ evaluated after every iteration):

    python research/safety_ablation.py --family PointCircle --iterations 15 \
        --variants baseline all --algos cpo --seeds 0 1 2 --train-eval-interval 1 --splits \
        --out research/results/training_ledger_pointcircle.json
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The training flags' defaults; a checkpoint folder names every flag away from them.
TRAINING_FLAG_DEFAULTS = {"episodes_per_task": 4, "tasks_per_iteration": 4, "inner_delta": 0.003}
#: The switches (MetaCPOConfig.training fields) each variant turns on; the others are
#: turned off (every switch is set, whatever the config's defaults).
CORRECTIONS = ("cost_signal_share", "cost_upper_bound", "recover_when_violating")
SWITCHES = (*CORRECTIONS, "normalize_observations", "critics", "critic_privileged",
            "theta_cost_constraint")
#: Training fields with a value (not on / off), at these values unless a variant sets them.
#: The outer radius by iteration of the ``*anneal`` variants (made for 30 iterations).
ANNEAL = [[0, 0.01], [20, 0.01], [29, 0.002]]
SCALES = {"inner_cost_free_scale": 1.0, "inner_recovery_scale": 1.0, "train_cost_window": 0,
          "train_limit_margin": 0.0, "trust_region_schedule": None,
          "outer_recovery_scale": 1.0, "cost_signal_share_scope": "all"}
#: The fields of ``all_eps8_theta_outer_rec3_share_violating`` besides its switches (the
#: training defaults until ``inner_cost_free_scale`` became 0.25); ``*_inner_free`` adds that.
EPS8_REC3_SHARE_VIOLATING = {"episodes_per_task": 8, "outer_recovery_scale": 3.0,
                             "cost_signal_share_scope": "violating"}
VARIANTS: dict[str, dict[str, Any]] = {
    name: {**{flag: flag in on for flag in SWITCHES}, **SCALES, **scales}
    for name, (on, scales) in {
        "baseline": ((), {}),
        "share": (("cost_signal_share",), {}),
        "ucb": (("cost_upper_bound",), {}),
        "recover": (("recover_when_violating",), {}),
        "ucb_recover": (("cost_upper_bound", "recover_when_violating"), {}),
        "share_ucb": (("cost_signal_share", "cost_upper_bound"), {}),
        "all": (CORRECTIONS, {}),
        "all_obsnorm": ((*CORRECTIONS, "normalize_observations"), {}),
        "all_critics": ((*CORRECTIONS, "critics"), {}),
        "all_critics_priv": ((*CORRECTIONS, "critics", "critic_privileged"), {}),
        # training's inner steps at the adaptation defaults' radius factors / the
        # cost-free one only
        "all_inner_adapt": (CORRECTIONS, {"inner_cost_free_scale": 0.25,
                                          "inner_recovery_scale": 6.0}),
        "all_inner_free": (CORRECTIONS, {"inner_cost_free_scale": 0.25}),
        "all_inner_free05": (CORRECTIONS, {"inner_cost_free_scale": 0.5}),
        "all_inner_free_theta": ((*CORRECTIONS, "theta_cost_constraint"),
                                 {"inner_cost_free_scale": 0.25}),
        # training's outer J_C over the latest N query episodes (over iterations and tasks)
        "all_win32": (CORRECTIONS, {"train_cost_window": 32}),
        "all_win64": (CORRECTIONS, {"train_cost_window": 64}),
        "all_win128": (CORRECTIONS, {"train_cost_window": 128}),
        # training's outer constraint aims at (1 − f)·h
        "all_margin30": (CORRECTIONS, {"train_limit_margin": 0.3}),
        "all_margin50": (CORRECTIONS, {"train_limit_margin": 0.5}),
        # twice the training batch (8 episodes per task and round instead of 4)
        "all_eps8": (CORRECTIONS, {"episodes_per_task": 8}),
        # the outer (training) step's radius times 3 when its c > 0
        "all_outer_rec3": (CORRECTIONS, {"outer_recovery_scale": 3.0}),
        "all_eps8_outer_rec3": (CORRECTIONS, {"episodes_per_task": 8,
                                              "outer_recovery_scale": 3.0}),
        "all_theta_outer_rec3": ((*CORRECTIONS, "theta_cost_constraint"),
                                 {"outer_recovery_scale": 3.0}),
        "all_eps8_theta_outer_rec3": ((*CORRECTIONS, "theta_cost_constraint"),
                                      {"episodes_per_task": 8, "outer_recovery_scale": 3.0}),
        # the same, with the signal share shrinking only violating batches
        "all_eps8_theta_outer_rec3_share_violating": (
            (*CORRECTIONS, "theta_cost_constraint"), EPS8_REC3_SHARE_VIOLATING),
        # the same, with training's inner steps on batches that saw no cost at 1/4 of
        # inner_delta (the training defaults now)
        "all_eps8_theta_outer_rec3_share_violating_inner_free": (
            (*CORRECTIONS, "theta_cost_constraint"),
            {**EPS8_REC3_SHARE_VIOLATING, "inner_cost_free_scale": 0.25}),
        # the training defaults at 4 episodes per task and round (with 8 tasks per
        # iteration: the defaults' samples per iteration over twice the tasks)
        "all_eps4_theta_outer_rec3_share_violating_inner_free": (
            (*CORRECTIONS, "theta_cost_constraint"),
            {**EPS8_REC3_SHARE_VIOLATING, "inner_cost_free_scale": 0.25,
             "episodes_per_task": 4}),
        # the training defaults, with the outer constraint aiming at 0.5 h
        "all_eps8_theta_outer_rec3_share_violating_inner_free_margin50": (
            (*CORRECTIONS, "theta_cost_constraint"),
            {**EPS8_REC3_SHARE_VIOLATING, "inner_cost_free_scale": 0.25,
             "train_limit_margin": 0.5}),
        # the outer radius shrinks over the last 10 of 30 iterations, with / without margin
        "all_anneal": (CORRECTIONS, {"trust_region_schedule": ANNEAL}),
        "all_margin30_anneal": (CORRECTIONS, {"train_limit_margin": 0.3,
                                              "trust_region_schedule": ANNEAL}),
    }.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="PointCircle")
    p.add_argument("--algos", nargs="+", default=["meta-cpo", "cpo"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--episodes-per-task", type=int,
                   default=TRAINING_FLAG_DEFAULTS["episodes_per_task"])
    p.add_argument("--tasks-per-iteration", type=int,
                   default=TRAINING_FLAG_DEFAULTS["tasks_per_iteration"])
    p.add_argument("--inner-delta", type=float, default=TRAINING_FLAG_DEFAULTS["inner_delta"])
    p.add_argument("--train-cost-limit", type=float, default=None,
                   help="every training task's cost limit (default: the family's, h = 10 "
                        "on PointCircle); the test limit stays the family's")
    p.add_argument("--trust-region-delta", type=float, default=None,
                   help="the outer trust-region radius (default: the config's, 0.01)")
    p.add_argument("--env-config", type=json.loads, default={},
                   help="family overrides as JSON, e.g. '{\"ranges\": {\"train\": {\"factor\": "
                        "[0.28, 0.75]}}}' (training walls as close as test_tight's)")
    p.add_argument("--train-eval-episodes", type=int, default=10)
    p.add_argument("--train-eval-tasks", type=int, default=4)
    p.add_argument("--test-tasks", type=int, default=6)
    p.add_argument("--adapt-steps", type=int, default=3)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--splits", nargs="*", default=["test", "test_tight"])
    p.add_argument("--train-eval-interval", type=int, default=5,
                   help="evaluate θ on the training tasks every N iterations (1: CPO's training "
                        "steps also get their calibration entries, the 'ledger')")
    p.add_argument("--task-seed", type=int, default=12345)
    p.add_argument("--adapt-settings", nargs="+", default=["default"], type=adapt_setting,
                   help="test-time adaptation settings, each run from the same trained θ: "
                        "'default', or '+'-joined 'win<N>' (adaptation_cost_window=N), "
                        "'ad<X>' (adaptation_delta=X), 'free<F>' "
                        "(adaptation_cost_free_scale=F), 'rec<R>' "
                        "(adaptation_recovery_scale=R), 'mar<M>' "
                        "(adaptation_cost_margin_rate=M), 'room<K>' "
                        "(adaptation_cost_room=K), 'lim<F>' (adaptation_limit_margin=F), "
                        "'bt<R>' (adaptation_backtracks=R), "
                        "'ucb1' (adaptation_backtrack_bound=True), 'fresh1' "
                        "(adaptation_backtrack_fresh=True), 'eps<E>' "
                        "(adaptation_episodes_per_task=E) and 'first<E>' "
                        "(adaptation_first_episodes_per_task=E), e.g. win8+free0.5")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="keep each trained θ here (one folder per variant, algorithm, seed, "
                        "iteration count, --train-cost-limit and --env-config if set) and "
                        "adapt from it when it is already there")
    p.add_argument("--continue-from", type=int, default=None, metavar="M",
                   help="train a θ not yet under --checkpoints from the one kept there for M "
                        "iterations (same variant, algorithm, seed and overrides), M < "
                        "--iterations: only the last --iterations − M iterations are run")
    p.add_argument("--continue-env-config", type=json.loads, default=None, metavar="JSON",
                   help="the --env-config the shorter run of --continue-from was trained "
                        "with (default: this run's): a curriculum, its first M iterations "
                        "on that task distribution and the rest on this run's ('{}': the "
                        "family's own); with M = --iterations, no more training: that θ is "
                        "adapted and evaluated on this run's --env-config")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="merge these result files into --out (runs, seeds, variants, "
                        "algorithms and commands) and exit; a run found twice must be the "
                        "same")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    top = args.iterations + (args.continue_env_config is not None)  # M = N: adapt elsewhere
    if args.continue_from is not None and (
            args.checkpoints is None or not 0 < args.continue_from < top):
        p.error(f"--continue-from {args.continue_from}: needs --checkpoints and "
                f"0 < M < --iterations ({args.iterations}), or M = --iterations with "
                "--continue-env-config")
    if args.continue_env_config is not None and args.continue_from is None:
        p.error("--continue-env-config: needs --continue-from")
    return args


def adapt_setting(name: str) -> str:
    """Check an ``--adapt-settings`` name (see :func:`adaptation_fields`); returns it."""
    try:
        adaptation_fields(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


#: What each part of an ``--adapt-settings`` name sets: its prefix → (training field, type).
SETTING_FIELDS: dict[str, tuple[str, type]] = {
    "win": ("adaptation_cost_window", int), "ad": ("adaptation_delta", float),
    "free": ("adaptation_cost_free_scale", float), "rec": ("adaptation_recovery_scale", float),
    "mar": ("adaptation_cost_margin_rate", float),
    "room": ("adaptation_cost_room", float), "lim": ("adaptation_limit_margin", float),
    "bt": ("adaptation_backtracks", int),
    "ucb": ("adaptation_backtrack_bound", bool), "fresh": ("adaptation_backtrack_fresh", bool),
    "eps": ("adaptation_episodes_per_task", int),
    "first": ("adaptation_first_episodes_per_task", int)}


def adaptation_fields(name: str) -> dict[str, Any]:
    """The training fields an ``--adapt-settings`` name sets: 'default' none; 'win<N>'
    ``adaptation_cost_window=N``; 'ad<X>' ``adaptation_delta=X``; 'free<F>'
    ``adaptation_cost_free_scale=F``; 'rec<R>' ``adaptation_recovery_scale=R``; 'mar<M>'
    ``adaptation_cost_margin_rate=M``; 'room<K>' ``adaptation_cost_room=K``; 'lim<F>'
    ``adaptation_limit_margin=F``; 'bt<R>'
    ``adaptation_backtracks=R``; 'ucb<0|1>' ``adaptation_backtrack_bound``; 'fresh<0|1>'
    ``adaptation_backtrack_fresh``; 'eps<E>'
    ``adaptation_episodes_per_task=E``; 'first<E>' ``adaptation_first_episodes_per_task=E``;
    joined with '+' (``SETTING_FIELDS``)."""
    return {SETTING_FIELDS[prefix][0]: SETTING_FIELDS[prefix][1](value)
            for prefix, value in _setting_parts(name)}


def _setting_parts(name: str) -> list[tuple[str, float]]:
    """The (prefix, number) of each '+'-joined part of an ``--adapt-settings`` name (none
    for 'default'); ValueError for a part that is not a known prefix followed by a number
    (a whole number for an integer field of ``SETTING_FIELDS``, one >= 1 for 'eps' and
    'first', 0 or 1 for a bool field)."""
    if name == "default":
        return []
    parts = []
    for part in name.split("+"):
        prefix = next((p for p in SETTING_FIELDS if part.startswith(p)), None)
        try:
            if prefix is None:
                raise ValueError
            value = float(part[len(prefix):])
            kind = SETTING_FIELDS[prefix][1]
            least = 1 if prefix in ("eps", "first") else 0
            if kind in (int, bool) and (value != int(value) or value < least
                                        or (kind is bool and value > 1)):
                raise ValueError
        except ValueError:
            raise ValueError(f"adapt setting {name!r}: expected 'default' or '+'-joined "
                             "'win<N>' / 'ad<X>' / 'free<F>' / 'rec<R>' / 'mar<M>' / "
                             "'room<K>' / 'lim<F>' / 'bt<R>' / 'ucb<0|1>' / 'fresh<0|1>' / "
                             "'eps<E>' / 'first<E>' parts") from None
        parts.append((prefix, value))
    return parts


def _key(variant: str, algo: str, seed: int, setting: str = "default") -> str:
    return f"{variant}/{algo}/seed{seed}" + ("" if setting == "default" else f"/{setting}")


def _step_summary(report: dict[str, Any], limit: float) -> dict[str, list[float]]:
    """Per adaptation step, over tasks: evaluation cost / return means, share of tasks
    within the limit (mean ≤ h) and certified (95% upper bound ≤ h); the learning batches'
    mean cost and their episodes (summed over tasks), each task's CPO case and, per step
    (with ``adaptation_backtracks``), how often its check rejected it, summed over tasks
    (each rejection one more batch sampled); then per task and step, its evaluation cost and
    its learning batch's cost (``task_eval_cost``, ``task_batch_cost``)."""
    tasks = report["tasks"]
    steps = len(tasks[0]["eval"]["cost"])

    def over_tasks(fn) -> list[float]:
        return [float(np.mean([fn(t["eval"], s) for t in tasks])) for s in range(steps)]

    return {"eval_cost": over_tasks(lambda e, s: e["cost"][s]),
            "eval_return": over_tasks(lambda e, s: e["return"][s]),
            "within_limit": over_tasks(lambda e, s: float(e["cost"][s] <= limit)),
            "certified": over_tasks(lambda e, s: float(e["cost_ucb"][s] <= limit)),
            "batch_cost": [float(v) for v in report["mean_cost"]],
            "batch_episodes": [sum(t["batch_episodes"][s] or 0 for t in tasks)
                               for s in range(steps)],
            "cases": [[(t.get("ledger") or [{}] * steps)[s].get("case") if s < len(
                t.get("ledger") or []) else None for t in tasks] for s in range(steps - 1)],
            "rejections": report.get("rejections", [0.0] * (steps - 1)),
            "task_eval_cost": [[float(c) for c in t["eval"]["cost"]] for t in tasks],
            "task_batch_cost": [[float(c) for c in t["cost"]] for t in tasks]}


def _train(algo_obj: Any, iterations: int) -> list[dict[str, Any]]:
    """Train ``iterations`` more iterations; one row per iteration (batch figures, and θ's
    evaluation and calibration entry where the iteration ran one)."""
    training = []
    for _ in range(iterations):
        result = algo_obj.train()
        m = result.get("metacpo", {})
        row = {"iteration": int(result["training_iteration"]),
               "batch_cost": float(m.get("post_cost_mean", math.nan)),
               "batch_return": float(m.get("post_return_mean", math.nan))}
        ev = result.get("evaluation") or {}
        if "mean_cost" in ev:
            row.update(eval_cost=ev["mean_cost"], eval_cost_ucb=ev["cost_ucb"],
                       eval_return=ev["mean_return"], cost_limit=ev["cost_limit"])
        if "ledger" in ev:  # this iteration's update, predicted vs realised (CPO)
            row["ledger"] = dict(ev["ledger"])
        training.append(row)
    return training


def _env_tag(env_config: dict[str, Any]) -> str:
    """A short name for a family override: '-env' and 8 hex digits ('' for none)."""
    if not env_config:
        return ""
    return "-env" + hashlib.sha1(json.dumps(env_config, sort_keys=True)
                                 .encode()).hexdigest()[:8]


def _saved_dir(args: argparse.Namespace, variant: str, algo: str, seed: int,
               iterations: int, first_stage: bool = False) -> Path | None:
    """Where the θ of one training run is kept under ``--checkpoints`` (None without it).
    Every training flag away from its default names the folder (e.g. '-t8' for 8 tasks per
    iteration), so that no run restores a θ trained otherwise; at the defaults the name is
    the one earlier runs used. With ``--continue-env-config`` the run of ``--iterations`` is
    a curriculum, kept apart from a run trained on one distribution throughout;
    ``first_stage``: the folder of its first ``--continue-from`` iterations, trained on
    ``--continue-env-config``."""
    if args.checkpoints is None:
        return None
    limit = "" if args.train_cost_limit is None else f"-h{args.train_cost_limit:g}"
    if args.trust_region_delta is not None:
        limit += f"-tr{args.trust_region_delta:g}"
    if args.tasks_per_iteration != TRAINING_FLAG_DEFAULTS["tasks_per_iteration"]:
        limit += f"-t{args.tasks_per_iteration}"
    if args.inner_delta != TRAINING_FLAG_DEFAULTS["inner_delta"]:
        limit += f"-id{args.inner_delta:g}"
    if ("episodes_per_task" not in VARIANTS[variant]  # else the variant's count wins
            and args.episodes_per_task != TRAINING_FLAG_DEFAULTS["episodes_per_task"]):
        limit += f"-e{args.episodes_per_task}"
    first_env = args.continue_env_config
    if first_env is None:
        limit += _env_tag(args.env_config)
    elif first_stage:
        limit += _env_tag(first_env)
    else:  # e.g. "-env1a2b3c4d-after50-default": this override after 50 on the family's own
        limit += (f"{_env_tag(args.env_config) or '-default'}-after{args.continue_from}"
                  f"{_env_tag(first_env) or '-default'}")
    return args.checkpoints / f"{variant}-{algo}-seed{seed}-it{iterations}{limit}"


def run_one(args: argparse.Namespace, variant: str, algo: str, seed: int,
            setting: str = "default") -> dict[str, Any]:
    from metacpo_rllib.rllib import ALGO_CONFIGS

    fields = {"seed": seed, "episodes_per_task": args.episodes_per_task,
              "tasks_per_iteration": args.tasks_per_iteration,
              "inner_delta": args.inner_delta, "train_cost_limit": args.train_cost_limit,
              **({} if args.trust_region_delta is None
                 else {"trust_region_delta": args.trust_region_delta}),
              **VARIANTS[variant],  # a variant's fields win over the flags
              **adaptation_fields(setting)}
    config = (ALGO_CONFIGS[algo]().environment(args.family, env_config=args.env_config)
              .training(**fields)
              .evaluation(evaluation_interval=args.train_eval_interval,
                          evaluation_duration=args.train_eval_episodes,
                          evaluation_num_tasks=args.train_eval_tasks, evaluation_seed=0))
    algo_obj = config.build_algo()
    start = time.perf_counter()
    saved = _saved_dir(args, variant, algo, seed, args.iterations)
    continued = None  # the shorter run's folder this θ's training went on from
    shorter = (None if args.continue_from is None
               else _saved_dir(args, variant, algo, seed, args.continue_from,
                               first_stage=True))
    try:
        if saved is not None and (saved / "training.json").exists():
            # the same θ (and sampler state) as right after that training run
            algo_obj.restore_from_path(str(saved / "algorithm"))
            training = json.loads((saved / "training.json").read_text())
            if (saved / "continued_from").exists():
                continued = (saved / "continued_from").read_text()
        else:
            training = []
            if shorter is not None and (shorter / "training.json").exists():
                # the shorter run's θ, RNGs and iteration count: its training goes on as
                # one uninterrupted run of --iterations would have
                algo_obj.restore_from_path(str(shorter / "algorithm"))
                training = json.loads((shorter / "training.json").read_text())
                continued = str(shorter)
            training += _train(algo_obj, args.iterations - len(training))
            if saved is not None:
                algo_obj.save_to_path(str(saved / "algorithm"))
                (saved / "training.json").write_text(json.dumps(training, default=float))
                if continued is not None:
                    (saved / "continued_from").write_text(continued)
        train_s = time.perf_counter() - start
        family = config.make_family()
        adaptation, adaptation_episodes = {}, None
        for split in args.splits:
            tasks = family.sample_tasks(args.test_tasks, split, seed=args.task_seed)
            report = algo_obj.adapt(tasks, args.adapt_steps, eval_episodes=args.eval_episodes,
                                    eval_seed=0)
            adaptation[split] = _step_summary(report, float(tasks[0].cost_limit))
            adaptation[split]["cost_limit"] = float(tasks[0].cost_limit)
            adaptation_episodes = report["batch_episodes"]
    finally:
        algo_obj.stop()
    last_eval = [r for r in training if "eval_cost" in r][-1:]
    return {"variant": variant, "algo": algo, "seed": seed, "adapt_setting": setting,
            "adaptation_fields": adaptation_fields(setting),
            "adaptation_episodes": adaptation_episodes,
            "trained_from": None if saved is None else str(saved),
            "continued_from": continued,
            "env_config": dict(algo_obj.config.env_config),
            "trust_region_delta": algo_obj.config.trust_region_delta,
            "episodes_per_task": algo_obj.config.episodes_per_task,
            "tasks_per_iteration": algo_obj.config.tasks_per_iteration,
            "inner_delta": algo_obj.config.inner_delta,
            "flags": {f: getattr(config, f) for f in SWITCHES},
            "scales": {f: getattr(config, f) for f in SCALES}, "training": training,
            "final_train_eval": last_eval[0] if last_eval else None,
            "adaptation": adaptation, "train_s": train_s,
            "total_s": time.perf_counter() - start}


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """The runs of the result files ``paths`` in one: the first file's settings with the
    union of seeds, variants, algorithms, adaptation settings and held-out splits (first
    seen first), every file's commands under ``commands`` and every file's own settings (its
    arguments) under ``merged_from``. A run key found in two files must hold the same
    training and final evaluation (e.g. a baseline restored from the same checkpoint), else
    ValueError; the first file's run is kept, with the splits only a later file adapted on
    added (one θ adapted on ``test`` by one command and on ``test_tight`` by another)."""
    merged: dict[str, Any] = {"settings": None, "runs": {}}
    for path in paths:
        data = json.loads(path.read_text())
        settings = data["settings"]
        if merged["settings"] is None:
            merged["settings"] = {**settings, "out": str(out), "commands": [],
                                  "merged_from": []}
        for field in ("seeds", "variants", "algos", "adapt_settings", "splits"):
            merged["settings"][field] = list(dict.fromkeys(
                [*merged["settings"].get(field, []), *settings.get(field, [])]))
        merged["settings"]["commands"].extend(settings.get("commands", []))
        merged["settings"]["merged_from"].append({"file": path.name, "settings": settings})
        for key, run in data["runs"].items():
            seen = merged["runs"].get(key)
            if seen is None:
                merged["runs"][key] = run
                continue
            if (seen["training"], seen["final_train_eval"]) != (
                    run["training"], run["final_train_eval"]):
                raise ValueError(f"--merge: run {key} differs between the files")
            for split, adaptation in run.get("adaptation", {}).items():
                seen.setdefault("adaptation", {}).setdefault(split, adaptation)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        merged = merge(args.merge, args.out)
        args.out.write_text(json.dumps(merged, indent=1, default=float))
        print(f"{len(merged['runs'])} runs -> {args.out}")
        return 0
    import ray

    results: dict[str, Any] = {}
    if args.out.exists():
        results = json.loads(args.out.read_text())
    results.setdefault("settings", {k: (str(v) if isinstance(v, Path) else v)
                                    for k, v in vars(args).items()})
    runs = results.setdefault("runs", {})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="metacpo-ablation-", dir="/tmp"))
    try:
        for seed in args.seeds:
            for algo in args.algos:
                for variant, setting in itertools.product(args.variants,
                                                          args.adapt_settings):
                    key = _key(variant, algo, seed, setting)
                    if key in runs:
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {key}", flush=True)
                    runs[key] = run_one(args, variant, algo, seed, setting)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    tmp = args.out.with_suffix(".tmp")
                    tmp.write_text(json.dumps(results, indent=1, default=float))
                    os.replace(tmp, args.out)
                    r = runs[key]
                    print(f"  train eval {r['final_train_eval']}  "
                          f"adapt {json.dumps({s: v['eval_cost'] for s, v in r['adaptation'].items()})}"
                          f"  {r['total_s']:.0f}s", flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
