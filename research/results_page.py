"""Renders docs/RESULTS.md and its figures from the comparison JSON of ``metacpo compare`` runs.

    python -m research.results_page [--results docs/results] [--out docs/RESULTS.md]
                                    [--readme README.md]

With ``--readme``, that README's targets table (between :data:`README_BEGIN` and
:data:`README_END`) is rewritten in place as the page's.

Reads ``<results>/<name>/comparison.json`` (one folder per comparison: a family and a held-out
split), writes ``<results>/<name>/training.png`` and ``adaptation.png``, ``<results>/
calibration.png`` and the page. Every number on the page comes from those files. Safety is
read from the evaluation episodes (fresh episodes per task and adaptation step, apart from
the learning batches, common random numbers); runs without them are refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from metacpo_rllib.algorithms import ALGORITHM_TABLE, TUNE_NAMES, algorithm_info
from metacpo_rllib.evaluation_stats import (across_seeds, calibration_markdown,
                                             calibration_table, format_pm)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "docs" / "results"
DEFAULT_OUT = REPO / "docs" / "RESULTS.md"
DEFAULT_README = REPO / "README.md"
#: The lines around the README's generated targets table.
README_BEGIN = "<!-- targets table: written by `python -m research.results_page` -->"
README_END = "<!-- end of targets table -->"
DEFAULT_ABLATION = REPO / "research" / "results" / "safety_ablation_pointcircle.json"
DEFAULT_INPUT_ABLATION = REPO / "research" / "results" / "input_ablation_pointcircle.json"

#: Meta-CPO on the other families beside its untrained θ (safety_ablation.py's JSON).
DEFAULT_OTHER_FAMILIES = tuple(REPO / "research" / "results" / f"{name}_metacpo.json"
                               for name in ("carcirclehazard", "pointbutton"))
DEFAULT_BATCH_SWEEP = REPO / "docs" / "results" / "batch_size" / "sweep.json"
DEFAULT_TRAINING_LEDGER = REPO / "research" / "results" / "training_ledger_pointcircle.json"
ALGORITHMS = TUNE_NAMES
#: The algorithms with a cost model (their steps enter the calibration ledger).
CONSTRAINED = tuple(name for name in TUNE_NAMES if algorithm_info(name).constrained)
#: Adaptation steps shown in the tables (those a run has).
REPORT_STEPS = (0, 1, 2, 3, 4, 5)
#: The targets of the comparison (checked on the family named here).
TARGET_FAMILY = "PointCircle"
TARGET_WITHIN = 0.8        # Meta-CPO: fraction of test tasks within h ...
TARGET_MAX_STEP = 3        # ... after at most this many adaptation steps
TARGET_RETURN_RATIO = 0.9  # Meta-CPO's return >= this x Meta-TRPO's (same step)
TARGET_EVERY_STEP = 0.9    # Meta-CPO: fraction within h at every adaptation step 1..S
TARGET_TRAIN_FACTOR = 1.1  # CPO and Meta-CPO: mean over seeds of θ's training cost <= this x h
FAMILY_ORDER = ("PointCircle", "CarCircleHazard", "PointButton")
SPLIT_ORDER = ("test", "test_tight")

#: Per-step figures of a run: name -> (key of the evaluation record, or "" for a figure of
#: the learning batches; key of the learning batches' record or None).
FIGURES: dict[str, tuple[str, Optional[str]]] = {
    "return": ("mean_return", "mean_return"), "cost": ("mean_cost", "mean_cost"),
    "cost_ucb": ("mean_cost_ucb", None), "within": ("within_limit_rate", None),
    "certified": ("certified_rate", None), "batch_cost": ("", "mean_cost")}


def split_of(data: Mapping[str, Any]) -> str:
    return str(data["adaptation"].get("split", "test"))


def load(results: Path) -> dict[str, dict[str, Any]]:
    """folder name -> comparison JSON, for every ``<results>/<name>/comparison.json``, in
    family then split order, the default comparison of a split (folder ``<family>`` or
    ``<family>-tight``) before its variants. Raises ValueError for a run without evaluation
    episodes."""
    found = {path.parent.name: {**json.loads(path.read_text()), "dir": path.parent}
             for path in results.glob("*/comparison.json")}
    for name, data in found.items():
        if not any(s.get("adapt", {}).get("eval") for seeds in data["runs"].values()
                   for s in seeds if s.get("adapt")):
            raise ValueError(f"{name}: no evaluation episodes (compare with eval_episodes > 0)")
    fam = {name: i for i, name in enumerate(FAMILY_ORDER)}
    spl = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (
        fam.get(kv[1]["family"], len(fam)), spl.get(split_of(kv[1]), len(spl)),
        kv[0] not in (kv[1]["family"], f"{kv[1]['family']}-tight"), kv[0])))


# -- statistics ---------------------------------------------------------------------------------
def per_seed(seeds: Sequence[Mapping[str, Any]], key: str, step: int) -> list[float]:
    """One value per seed at adaptation ``step`` (see FIGURES): from the evaluation episodes
    (``return``, ``cost``, ``cost_ucb``: means over test tasks; ``within`` / ``certified``:
    fractions of test tasks whose evaluation mean / one-sided 95% upper bound is <= h), or
    from the learning batches (``batch_cost``)."""
    eval_key, batch_key = FIGURES[key]
    out = []
    for s in seeds:
        adapt = s.get("adapt")
        if not adapt or step >= len(adapt["steps"]):
            continue
        out.append(float(adapt["eval"][eval_key][step] if eval_key else adapt[batch_key][step]))
    return [v for v in out if not math.isnan(v)]


def train_eval(seeds: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """One value per seed of θ's last evaluation on the fixed training tasks."""
    return [float(s["train_eval"][key]) for s in seeds if s.get("train_eval")]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (``evaluation_stats.across_seeds``: NaN std for one
    value; NaN mean for none)."""
    stat = across_seeds(values)
    return stat["mean"], stat["std"]


def pm(values: Sequence[float], digits: int = 2) -> str:
    """mean ± std over seeds; a single seed shows its value alone."""
    return format_pm(across_seeds(values), digits)


def steps_of(data: Mapping[str, Any]) -> list[int]:
    adapt_steps = int(data["adaptation"]["adapt_steps"])
    return [s for s in REPORT_STEPS if s <= adapt_steps]


# -- the targets --------------------------------------------------------------------------------
def first_within_step(data: Mapping[str, Any]) -> tuple[int, float, bool]:
    """(step, fraction, met): the first step s in 1..3 where Meta-CPO's mean (over seeds)
    fraction of test tasks within h on the evaluation episodes is >= 0.8, else the step
    with the highest fraction (earliest on ties)."""
    max_step = min(TARGET_MAX_STEP, int(data["adaptation"]["adapt_steps"]))
    runs = data["runs"].get("MetaCPO", [])
    within = {s: mean_std(per_seed(runs, "within", s))[0] for s in range(1, max_step + 1)}
    hits = [s for s, v in within.items() if v >= TARGET_WITHIN]
    step = hits[0] if hits else max(within, key=lambda s: (within[s], -s))
    return step, within[step], bool(hits)


def check_targets(data: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison targets on one comparison's runs (evaluation episodes).

    Meta-CPO is *within* at :func:`first_within_step`; at that step its mean return must
    be >= 0.9 x Meta-TRPO's, and Meta-TRPO and TRPO must each violate the limit on more
    than half of the test tasks (means over seeds). *Training meets h*: for Meta-CPO and
    CPO, θ's evaluation cost on the fixed training tasks is <= the training limit for
    every seed; *training mean*: its mean over seeds is <= 1.1 x the training limit.
    """
    runs = data["runs"]
    step, within, within_met = first_within_step(data)
    mean = lambda a, key: mean_std(per_seed(runs.get(a, []), key, step))[0]  # noqa: E731
    ret = {a: mean(a, "return") for a in ALGORITHMS}
    violating = {a: 1.0 - mean(a, "within") for a in ("MetaTRPO", "TRPO")}
    ratio = ret["MetaCPO"] / ret["MetaTRPO"] if ret["MetaTRPO"] > 0 else math.nan
    meets = {a: train_eval(runs.get(a, []), "meets_limit") for a in CONSTRAINED}
    train_mean = {a: mean_std(train_eval(runs.get(a, []), "mean_cost"))[0]
                  for a in CONSTRAINED}
    train_bound = TARGET_TRAIN_FACTOR * _limit(data, "train_limit")
    return {
        "step": step, "within": within, "within_met": within_met,
        "step0_within": mean_std(per_seed(runs.get("MetaCPO", []), "within", 0))[0],
        "return_ratio": ratio,
        "return_met": bool(ret["MetaCPO"] >= TARGET_RETURN_RATIO * ret["MetaTRPO"]),
        "returns": ret, "costs": {a: mean(a, "cost") for a in ALGORITHMS},
        "violating": violating, "violating_met": all(v > 0.5 for v in violating.values()),
        "train_meets": {a: (sum(v), len(v)) for a, v in meets.items()},
        "train_met": all(v and all(x == 1.0 for x in v) for v in meets.values()),
        "train_mean": train_mean, "train_bound": train_bound,
        "train_mean_met": all(v <= train_bound for v in train_mean.values()),
        **every_step_targets(data),
    }


def every_step_targets(data: Mapping[str, Any]) -> dict[str, Any]:
    """Meta-CPO at every adaptation step 1..S (means over seeds): its fraction of tasks
    within h (target >= 0.9 at every step), its return at step S against step 0, and the steps
    where its return is not above CPO's (compared at equal adaptation radius only when the
    comparison set one ``adaptation_delta`` for all algorithms)."""
    runs = data["runs"]
    last = int(data["adaptation"]["adapt_steps"])
    step_means = {a: {key: [mean_std(per_seed(runs.get(a, []), key, s))[0]
                            for s in range(last + 1)] for key in ("within", "return")}
                  for a in ("MetaCPO", "CPO")}
    within = step_means["MetaCPO"]["within"][1:]
    returns, cpo = step_means["MetaCPO"]["return"], step_means["CPO"]["return"]
    below = [s for s in range(1, last + 1) if not returns[s] > cpo[s]]
    return {"last_step": last, "every_within": within,
            "every_met": bool(within) and min(within) >= TARGET_EVERY_STEP,
            "return_first_last": (returns[0], returns[last]),
            "return_rises": bool(last) and returns[last] > returns[0],
            "return_vs_cpo": (returns, cpo), "cpo_above_steps": below,
            "equal_radius": data.get("training", {}).get("adaptation_delta")}


def _met(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def _fraction(hits: tuple[int, int]) -> str:
    return f"{int(hits[0])} of {hits[1]} seeds"


def targets_section(families: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One table of the targets over the target family's comparisons (every split)."""
    rows = []
    targeted = {name: data for name, data in families.items()
                if data["family"] == TARGET_FAMILY}
    per_split = Counter(split_of(data) for data in targeted.values())
    for name, data in targeted.items():
        t, split = check_targets(data), split_of(data)
        # a split compared under several settings names the folder of each
        where = f"`{split}` split" + (f" ({name})" if per_split[split] > 1 else "")
        ret = t["returns"]
        ratio = "–" if math.isnan(t["return_ratio"]) else f"{t['return_ratio']:.2f}"
        rows += [
            f"| Meta-CPO within h on ≥ {TARGET_WITHIN:.0%} of {where} tasks after ≤ "
            f"{TARGET_MAX_STEP} adaptation steps | {t['within']:.0%} of tasks at step "
            f"{t['step']} (step 0: {t['step0_within']:.0%}) | {_met(t['within_met'])} |",
            f"| Meta-CPO return ≥ {TARGET_RETURN_RATIO:.0%} of Meta-TRPO's ({where}, step "
            f"{t['step']}) | {ret['MetaCPO']:.2f} vs {ret['MetaTRPO']:.2f} (ratio {ratio}) | "
            f"{_met(t['return_met'])} |",
            f"| Meta-TRPO and TRPO violate h on most {where} tasks (step {t['step']}) | "
            f"Meta-TRPO {t['violating']['MetaTRPO']:.0%}, TRPO {t['violating']['TRPO']:.0%} "
            f"of tasks | {_met(t['violating_met'])} |",
            *_every_step_rows(t, where),
            f"| Training meets h = {_limit(data, 'train_limit'):g} (θ's evaluation cost on "
            f"the training tasks; {name} runs) | Meta-CPO "
            f"{_fraction(t['train_meets']['MetaCPO'])}, CPO "
            f"{_fraction(t['train_meets']['CPO'])} | {_met(t['train_met'])} |",
            f"| Training: mean over seeds of θ's evaluation cost ≤ {TARGET_TRAIN_FACTOR:g} h "
            f"= {t['train_bound']:g} ({name} runs) | Meta-CPO "
            f"{t['train_mean']['MetaCPO']:.2f}, CPO {t['train_mean']['CPO']:.2f} | "
            f"{_met(t['train_mean_met'])} |",
        ]
    if not rows:
        return []
    return [f"## Targets: {TARGET_FAMILY}", "", "Measured on the evaluation episodes; "
            "means over seeds.", "", "| target | measured | |", "|---|---|---|", *rows, ""]


def with_targets_table(readme: str, families: Mapping[str, Mapping[str, Any]]) -> str:
    """``readme`` with the lines between :data:`README_BEGIN` and :data:`README_END` replaced
    by the table of :func:`targets_section` (ValueError if either line is missing)."""
    if readme.count(README_BEGIN) != 1 or readme.count(README_END) != 1:
        raise ValueError(f"the README needs one {README_BEGIN!r} and one {README_END!r} line")
    head, rest = readme.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    table = [line for line in targets_section(families) if line.startswith("|")]
    return "\n".join([head + README_BEGIN, *table, README_END + tail])


def _every_step_rows(t: Mapping[str, Any], where: str) -> list[str]:
    """The target rows of :func:`every_step_targets`."""
    last = t["last_step"]
    if not last:
        return []
    within = ", ".join(f"{v:.0%}" for v in t["every_within"])
    first, final = t["return_first_last"]
    returns, cpo = t["return_vs_cpo"]
    radius = (f"both adapt at radius {t['equal_radius']:g}" if t["equal_radius"] is not None
              else "each adapts at its own radius")
    below = t["cpo_above_steps"]
    return [
        f"| Meta-CPO within h on ≥ {TARGET_EVERY_STEP:.0%} of {where} tasks at every step "
        f"1–{last} | {within} | {_met(t['every_met'])} |",
        f"| Meta-CPO return at step {last} above step 0 ({where}) | {first:.2f} → "
        f"{final:.2f} | {_met(t['return_rises'])} |",
        f"| Meta-CPO return above CPO's at every step 1–{last} ({where}; {radius}) | "
        f"Meta-CPO {returns[last]:.2f} vs CPO {cpo[last]:.2f} at step {last}; not above at "
        f"{len(below)} of {last} steps | "
        f"{_met(not below and t['equal_radius'] is not None)} |",
    ]


def _limit(data: Mapping[str, Any], key: str) -> float:
    """The mean ``train_limit`` / ``test_limit`` of the runs (NaN without runs)."""
    runs = [s for seeds in data["runs"].values() for s in seeds]
    return float(np.nanmean([s[key] for s in runs])) if runs else math.nan


# -- one comparison -----------------------------------------------------------------------------
def _budget(data: Mapping[str, Any]) -> list[str]:
    training, adaptation = data["training"], data["adaptation"]
    prov = data.get("provenance", {})
    steps = {a: int(np.mean([s["env_steps"] for s in seeds])) for a, seeds in data["runs"].items()
             if seeds and "env_steps" in seeds[0]}
    first = next((s["train_eval"] for seeds in data["runs"].values() for s in seeds
                  if s.get("train_eval")), None)
    lines = [
        f"- **Training:** {data['iterations']} iterations at h = "
        f"{_limit(data, 'train_limit'):g}; per iteration "
        f"{training.get('tasks_per_iteration', '?')} training tasks × "
        f"{training.get('episodes_per_task', '?')} episodes per sampling round (two rounds "
        "for Meta-CPO / Meta-TRPO with K = 1, one for CPO / TRPO); settings "
        f"`{json.dumps(training, sort_keys=True)}`"
        + (f", env overrides `{json.dumps(data['env_config'], sort_keys=True)}`"
           if data.get("env_config") else "") + ".",
        "- **Env steps per trial (training):** "
        + ", ".join(f"{a} {n:,}" for a, n in steps.items()) + ".",
    ]
    if first:
        lines.append(f"- **Training evaluation:** θ after iteration {first['iteration']} on "
                     "fixed training tasks, fresh evaluation episodes (the same for every "
                     "algorithm and seed).")
    lines += [
        f"- **Adaptation:** {adaptation['test_tasks']} held-out `{split_of(data)}` tasks "
        f"(task seed {adaptation['task_seed']}) at h = {_limit(data, 'test_limit'):g}, "
        f"{adaptation['adapt_steps']} adaptation steps, "
        f"{adaptation.get('episodes_per_task') or training.get('episodes_per_task', '?')} "
        "learning episodes per task and step; every step scored on "
        f"{adaptation.get('eval_episodes', '?')} fresh evaluation episodes per task.",
        f"- **Seeds:** {data['seeds']}.",
    ]
    if prov:
        m = prov["machine"]
        lines += [
            f"- **Command:** `{prov['command']}`",
            f"- **Commit:** `{prov['commit']}`; **machine:** {m['cpu']}, {m['cpus']} CPUs, "
            f"{m['mem_gib']} GiB, {m['platform']}, Python {m['python']}; "
            f"**wall time:** {prov['wall_s'] / 60:.0f} min "
            f"({prov['started_utc']} – {prov['finished_utc']}).",
        ]
        if prov.get("note"):
            lines.append(f"- **Note:** {prov['note']}")
    return lines


def _title(name: str, data: Mapping[str, Any]) -> str:
    return f"{name} ({data['family']}, `{split_of(data)}` split)"


def _training_table(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Does training meet its limit? θ's last evaluation on the fixed training tasks."""
    if not any(s.get("train_eval") for seeds in runs.values() for s in seeds):
        return []
    lines = ["**Training: θ on the training tasks** (evaluation episodes; *meets h* = "
             "task-averaged cost ≤ h, *certified* = its one-sided 95% upper bound ≤ h; "
             "fractions of seeds)", "",
             "| algorithm | return | cost | cost 95% UCB | meets h | certified | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for algorithm in ALGORITHMS:
        seeds = runs.get(algorithm, [])
        cells = [pm(train_eval(seeds, k)) for k in ("mean_return", "mean_cost", "cost_ucb",
                                                     "meets_limit", "certified")]
        lines.append(f"| {algorithm} | " + " | ".join(cells)
                     + f" | {len(train_eval(seeds, 'mean_cost'))} |")
    return lines + [""]


def _step_table(title: str, key: str, runs: Mapping[str, Sequence[Mapping[str, Any]]],
                steps: Sequence[int]) -> list[str]:
    lines = [f"**{title}** (mean ± std over seeds)", "",
             "| algorithm | " + " | ".join(f"step {s}" for s in steps) + " | seeds |",
             "|---|" + "---:|" * (len(steps) + 1)]
    for algorithm in ALGORITHMS:
        seeds = [s for s in runs.get(algorithm, []) if s.get("adapt")]
        cells = [pm(per_seed(seeds, key, s)) for s in steps]
        lines.append(f"| {algorithm} | " + " | ".join(cells) + f" | {len(seeds)} |")
    return lines + [""]


STEP_TABLES = (
    ("return", "Evaluation: mean episode return on the test tasks"),
    ("cost", "Evaluation: mean episode cost on the test tasks"),
    ("cost_ucb", "Evaluation: one-sided 95% upper confidence bound of the cost (mean over "
                 "test tasks)"),
    ("within", "Evaluation: fraction of test tasks within the limit (mean ≤ h)"),
    ("certified", "Evaluation: fraction of test tasks certified (95% upper bound ≤ h)"),
    ("batch_cost", "Learning batches (the episodes each step learned from): mean episode "
                   "cost"),
)


def comparison_section(name: str, data: Mapping[str, Any],
                       figures: Mapping[str, str]) -> list[str]:
    """Budget, provenance, the training evaluation, the per-step tables and the figures."""
    steps, runs = steps_of(data), data["runs"]
    lines = [f"## {_title(name, data)}", "", *_budget(data), "", *_training_table(runs)]
    for key, title in STEP_TABLES:
        lines += _step_table(title, key, runs, steps)
    lines += [f"![{name} training]({figures['training']})", "",
              f"![{name} adaptation]({figures['adaptation']})", ""]
    return lines


# -- calibration --------------------------------------------------------------------------------
def ledger(families: Mapping[str, Mapping[str, Any]], algorithm: str) -> list[dict[str, Any]]:
    """Every adaptation step's calibration entry of ``algorithm`` over all comparisons."""
    return [entry for data in families.values() for s in data["runs"].get(algorithm, [])
            if s.get("adapt") for entry in s["adapt"].get("ledger", [])]


def training_ledgers(data: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """variant -> every training step's calibration entry of ``safety_ablation.py`` runs
    made with ``--train-eval-interval 1`` (CPO: θ evaluated after every update)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in data["runs"].values():
        out.setdefault(run["variant"], []).extend(
            row["ledger"] for row in run["training"] if row.get("ledger"))
    return out


def training_calibration_lines(path: Path) -> list[str]:
    """The calibration tables of CPO's training steps, one per safety-correction variant."""
    data = json.loads(path.read_text())
    settings = data.get("settings", {})
    lines = [f"**CPO, training steps** (`research/safety_ablation.py --train-eval-interval 1` "
             f"→ `{_relative(path, REPO)}`): θ evaluated on {settings.get('train_eval_tasks')} "
             f"fixed training tasks × {settings.get('train_eval_episodes')} episodes after "
             "every iteration; each update's predicted change against the change of that "
             "evaluation cost (paired episodes), per variant of the safety corrections "
             "(`baseline`: none, `all`: the default).", ""]
    for variant, entries in training_ledgers(data).items():
        seeds = sorted({r["seed"] for r in data["runs"].values() if r["variant"] == variant})
        lines += [f"*{variant}* ({len(seeds)} seeds)", "",
                  calibration_markdown(calibration_table(entries)).rstrip(), ""]
    return lines


def calibration_section(families: Mapping[str, Mapping[str, Any]],
                        figure: Optional[str], training_ledger: Optional[Path] = None
                        ) -> list[str]:
    """Per constrained algorithm: the cost model's predicted change against the change
    realised on the evaluation episodes, per CPO case (adaptation steps; with
    ``training_ledger``, CPO's training steps too)."""
    lines = ["## Calibration of the cost model", "",
             "For every adaptation step of every comparison above (all seeds, tasks and "
             "splits): the predicted change of the mean episode cost (bᵀx times the accepted "
             "line-search fraction) against the change of the evaluation mean cost from the "
             "step's start to its end (the same evaluation episodes' seeds before and after). "
             "A calibrated model has sign agreement near 1 and realised ÷ predicted near 1.",
             ""]
    for algorithm in CONSTRAINED:
        entries = ledger(families, algorithm)
        if entries:
            lines += [f"**{algorithm}, adaptation steps**", "", calibration_markdown(
                calibration_table(entries)).rstrip(), ""]
    if training_ledger is not None:
        lines += training_calibration_lines(training_ledger)
    if figure:
        lines += [f"![calibration]({figure})", ""]
    return lines


def calibration_figure(families: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Realised against predicted cost change, one panel per constrained algorithm,
    coloured by CPO case; the diagonal is a calibrated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CONSTRAINED), figsize=(11, 4.2), squeeze=False)
    for ax, algorithm in zip(axes[0], CONSTRAINED):
        entries = [e for e in ledger(families, algorithm)
                   if not math.isnan(float(e.get("predicted_cost_change", math.nan)))]
        for case in sorted({int(e["case"]) for e in entries}):
            pts = np.array([(e["predicted_cost_change"], e["realised_cost_change"])
                            for e in entries if int(e["case"]) == case])
            ax.scatter(pts[:, 0], pts[:, 1], s=18, alpha=0.7, label=f"case {case}")
        lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
        ax.plot(lims, lims, color="grey", linewidth=1, linestyle="--", label="calibrated")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set(title=algorithm, xlabel="predicted cost change (bᵀx × fraction)",
               ylabel="realised change (evaluation episodes)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the batch size ------------------------------------------------------------------------------
def batch_size_section(path: Path) -> list[str]:
    """Episodes per task and sampling round against the env steps they cost and the safety
    and return they buy (``metacpo sweep --json`` of a grid over ``episodes_per_task``)."""
    sweep = json.loads(path.read_text())
    a, prov = sweep["adaptation"], sweep["provenance"]
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in sweep["rows"]:
        if not row.get("error"):
            groups.setdefault(int(row["episodes_per_task"]), []).append(row)
    steps = range(int(a["adapt_steps"]) + 1)
    per_step = lambda rows, key: " → ".join(  # noqa: E731
        pm([r["adapt"]["eval"][key][s] for r in rows]) for s in steps)
    lines = ["## Batch size: episodes per task", "",
             f"`{prov['command']}` (commit `{prov['commit']}`): "
             f"{sweep['algorithms'][0]} on {sweep['family']}, {sweep['iterations']} iterations, "
             f"settings `{json.dumps(sweep['training'], sort_keys=True)}`, with "
             "`episodes_per_task` episodes per task and sampling round in training and in "
             f"adaptation; adaptation on {a['test_tasks']} held-out `{a.get('split', 'test')}` "
             f"tasks, {a['eval_episodes']} evaluation episodes per task and step. Env steps "
             "are those of training; per step 0 → "
             f"{a['adapt_steps']}, on the evaluation episodes.", "",
             "| episodes per task | seeds | training env steps | training eval cost | "
             "within h per step | cost per step | return per step |",
             "|---:|---:|---:|---:|---|---|---|"]
    for size, rows in sorted(groups.items()):
        lines.append(
            f"| {size} | {len(rows)} | {np.mean([r['env_steps'] for r in rows]):,.0f} | "
            f"{pm([r['train_eval_cost'] for r in rows])} | "
            f"{per_step(rows, 'within_limit_rate')} | {per_step(rows, 'mean_cost')} | "
            f"{per_step(rows, 'mean_return')} |")
    return lines + [""]


# -- the ablation -------------------------------------------------------------------------------
def _algorithm_labels(cli_names: Sequence[str]) -> str:
    """``["cpo", "meta-cpo"]`` as "Meta-CPO and CPO" (the algorithm table's order)."""
    labels = [info.label for info in ALGORITHM_TABLE if info.cli in cli_names]
    return " and ".join(filter(None, (", ".join(labels[:-1]), labels[-1])))


def ablation_section(path: Path, title: str = "Safety corrections: ablation",
                     what: str = "each combination of the safety corrections") -> list[str]:
    """Switches turned on and off (``research/safety_ablation.py``'s JSON), named by the
    algorithms the JSON ran."""
    from research.ablation_report import legend, report

    data = json.loads(path.read_text())
    algorithms = _algorithm_labels(data["settings"]["algos"])
    return [f"## {title}", "",
            f"`research/safety_ablation.py` → `{_relative(path, REPO)}`: {algorithms} "
            f"trained and adapted with {what}. {legend(data)}", "", report(data), ""]


def other_family_section(path: Path) -> list[str]:
    """Meta-CPO on one family beside its untrained θ adapted alike (safety_ablation.py's
    JSON of both, the untrained runs labelled ``untrained``; further variants or adaptation
    settings of the same seeds and tasks, if any, as rows of their own)."""
    from research.ablation_report import run_label

    data = json.loads(path.read_text())
    settings, family = data["settings"], data["settings"]["family"]
    others = len({run_label(run) for run in data["runs"].values()}) > 2  # θ and untrained
    return ablation_section(
        path, f"{family}: Meta-CPO against an untrained policy",
        f"the default corrections and adaptation settings on {family} "
        f"({settings['tasks_per_iteration']} tasks × {settings['episodes_per_task']} episodes "
        f"per iteration, inner radius {settings['inner_delta']:g}, "
        f"{settings['iterations']} iterations), beside the untrained θ adapted with the same "
        "budget" + ("; the other rows change one training or adaptation setting (named in "
                    "the row), with the same seeds, test tasks and evaluation episodes"
                    if others else "")
        + "; the four-algorithm comparison on this family has not been run")


def _seed_list(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` as "0–2, 5"."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][-1] + 1:
            spans[-1].append(seed)
        else:
            spans.append([seed])
    return ", ".join(f"{s[0]}–{s[-1]}" if len(s) > 2 else ", ".join(map(str, s))
                     for s in spans)


def training_seeds_section(path: Path, title: str, what: str) -> list[str]:
    """θ's training evaluation cost per variant, algorithm and seed at every evaluation
    iteration (``safety_ablation.py --splits`` JSON: training only), and per variant and
    algorithm how many seeds end within h and within 1.1 h, with the last evaluation's
    mean cost and return over seeds: a table set against `all` on the same seeds, before
    the per-seed table, with several variants; a line per algorithm after it, with one."""
    data = json.loads(path.read_text())
    settings = data["settings"]
    runs = sorted(data["runs"].values(),
                  key=lambda run: (settings["variants"].index(run["variant"]),
                                   settings["algos"].index(run["algo"]), run["seed"]))
    evals = [[row for row in run["training"] if "eval_cost" in row] for run in runs]
    iterations = [row["iteration"] for row in evals[0]]
    limit = float(evals[0][-1]["cost_limit"])
    several = len({run["variant"] for run in runs}) > 1
    lead = "| variant " if several else ""
    head = [f"## {title}", "",
            f"`research/safety_ablation.py` → `{_relative(path, REPO)}`: {what}. θ is "
            f"evaluated every {settings['train_eval_interval']} iterations on "
            f"{settings['train_eval_tasks']} fixed training tasks × "
            f"{settings['train_eval_episodes']} evaluation episodes; the cells are its mean "
            f"episode cost against h = {limit:g} (* above h).", ""]
    table = [f"{lead}| algorithm | seed | " + " | ".join(f"it {i}" for i in iterations) + " |",
             ("|---" if several else "") + "|---|---|" + "---:|" * len(iterations)]
    for run, rows in zip(runs, evals):
        cells = [f"{r['eval_cost']:.1f}{'*' if r['eval_cost'] > r['cost_limit'] else ''}"
                 for r in rows]
        variant = f"| {run['variant']} " if several else ""
        table.append(f"{variant}| {run['algo']} | {run['seed']} | " + " | ".join(cells) + " |")
    table.append("")
    # per (variant, algorithm): each seed's evaluations, in seed order
    groups: dict[tuple[str, str], list[tuple[int, list]]] = {}
    for run, rows in zip(runs, evals):
        groups.setdefault((run["variant"], run["algo"]), []).append((run["seed"], rows))

    def counts(costs: list[float]) -> tuple[int, int]:
        return sum(c <= limit for c in costs), sum(c <= 1.1 * limit for c in costs)

    if not several:
        lines = []
        for (_, algo), mine in groups.items():
            costs = [rows[-1]["eval_cost"] for _, rows in mine]
            within, near = counts(costs)
            lines.append(f"- {algo}: the last evaluation is within h on {within} of "
                         f"{len(costs)} seeds, within 1.1 h on {near}; mean cost "
                         f"{np.mean(costs):.1f}, mean return "
                         f"{np.mean([rows[-1]['eval_return'] for _, rows in mine]):.2f}.")
        return head + table + lines + [""]
    tail = min(3, len(iterations))
    summary = [f"| variant | algorithm | seeds | last within h | last within 1.1 h | "
               f"last: mean cost | `all` on those seeds | last {tail} evaluations: "
               f"mean cost | last: mean return | `all` on those seeds |",
               "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (variant, algo), mine in groups.items():
        seeds = [seed for seed, _ in mine]
        costs = [rows[-1]["eval_cost"] for _, rows in mine]
        base_rows = dict(groups.get(("all", algo), []))
        paired = variant != "all" and all(seed in base_rows for seed in seeds)

        def versus(key: str, digits: int) -> str:
            return (f"{np.mean([base_rows[seed][-1][key] for seed in seeds]):.{digits}f}"
                    if paired else "–")

        within, near = counts(costs)
        summary.append(
            f"| {variant} | {algo} | {_seed_list(seeds)} | {within} | {near} | "
            f"{np.mean(costs):.1f} | {versus('eval_cost', 1)} | "
            f"{np.mean([r['eval_cost'] for _, rows in mine for r in rows[-tail:]]):.1f} | "
            f"{np.mean([rows[-1]['eval_return'] for _, rows in mine]):.2f} | "
            f"{versus('eval_return', 2)} |")
    return head + summary + [""] + table


def recovery_path_section(path: Path, title: str, what: str) -> list[str]:
    """``research/recovery_path.py``'s report: the cost reached along the recovery step by
    radius and by re-linearised sub-steps, over all θ-task pairs."""
    from research.recovery_path import summary

    report = json.loads(path.read_text())
    rows, s = report["rows"], report["settings"]
    summ = summary(rows)
    lines = [f"### {title}", "",
             f"`python research/recovery_path.py` ({report['family']}, `{report['split']}`, "
             f"{len({r['theta_index'] for r in rows})} θ × {s['tasks']} tasks, commit "
             f"`{report['provenance']['commit']}`): {what}. One batch of "
             f"{s['batch_episodes']} episodes per task at θ; *predicted* is bᵀx, *surrogate* "
             "the change of the importance-weighted cost surrogate on that batch, *realised* "
             f"the change of the mean episode cost over {s['eval_episodes']} fresh episodes "
             "(the same seeds for every policy of a task); means over the θ-task pairs. "
             f"θ's mean cost is {summ['theta']['cost']:.1f}, "
             f"{summ['theta']['within']:.0%} of the pairs within h.", "",
             "| step | KL from θ | predicted | surrogate | realised | cost after | within h |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def row(name: str, p: Mapping[str, float]) -> str:
        return (f"| {name} | {p['kl']:.3f} | {p['predicted_change']:+.1f} | "
                f"{p['surrogate_change']:+.1f} | {p['realised_change']:+.1f} | "
                f"{p['cost']:.1f} | {p['within']:.0%} |")

    radius = s["radius"]
    lines += [row(f"one step, {p['scale']:g} × {radius:g}", p) for p in summ["scales"]]
    lines += [row(f"{p['substeps']} sub-step{'s' if p['substeps'] > 1 else ''} of "
                  f"{s['substep_scale']:g} × {radius:g}", p) for p in summ["substeps"]]
    scales = [p["scale"] for p in summ["scales"]]
    reference = scales.index(s["substep_scale"]) if s["substep_scale"] in scales else 0
    bands = "; ".join(
        f"{b['pairs']} start {_band(b['low'], b['high'])}: {b['within'][reference]} within h "
        f"after one step of {scales[reference]:g} × {radius:g}, {b['best_within']} with the "
        "best radius" for b in summ["by_start"])
    return lines + [
        "", f"The radius with the lowest cost on each task, chosen on those {s['eval_episodes']}"
        f" episodes, is within h on {summ['best_within']:.0%} of the pairs there and on "
        f"{summ['chosen_within']:.0%} scored on {s['eval_episodes']} other episodes. By θ's "
        f"cost on the task: {bands}.", ""]


def _band(low: float, high: Optional[float]) -> str:
    """A cost band [low, high) in words (``high`` None: no upper bound)."""
    if high is None:
        return f"at {low:g} or more"
    return f"below {high:g}" if low <= 0 else f"at {low:g}–{high:g}"


@dataclasses.dataclass(frozen=True)
class ResearchSection:
    """One research JSON on the page (a ``safety_ablation.py`` run unless ``show`` reads
    another script's): its ``--<flag>`` on this script (the key with dashes), its committed
    file, its title, what its runs are, and how it is shown (``show(path, title, what)``:
    the ablation table unless given)."""

    key: str
    default: Path
    title: str
    what: str
    show: Callable[[Path, str, str], list[str]] = ablation_section


RESEARCH = REPO / "research" / "results"
#: The ablation-table sections after the input ablation, in page order.
RESEARCH_SECTIONS = (
    ResearchSection(
        "long_training", RESEARCH / "long_training_pointcircle.json",
        "Training length: 30 iterations",
        "the default safety corrections for 30 training iterations instead of 15 (θ "
        "evaluated every 5 iterations; the table shows the last), each run over 5 "
        "adaptation steps on both held-out splits"),
    ResearchSection(
        "adaptation_settings", RESEARCH / "adaptation_settings_pointcircle.json",
        "Adaptation settings: J_C window, radius, learned margin and batch size",
        "the default safety corrections for 30 training iterations; each trained θ "
        "is then adapted with every test-time setting (the window over a task's "
        "earlier episodes in J_C, the adaptation radius, the learned margin and the "
        "episodes per adaptation batch) over 5 steps on both held-out splits"),
    ResearchSection(
        "wider_adaptation", RESEARCH / "adaptation_defaults_12tasks_pointcircle.json",
        "Adaptation defaults on 12 held-out tasks per split",
        "the default safety corrections for 30 training iterations (the θ of the "
        "adaptation-settings section); each θ is then adapted with the former adaptation "
        "defaults (16 episodes per batch; CPO at Meta-CPO's radius, 0.003), and Meta-CPO "
        "with longer recovery steps or with twice the episodes per adaptation batch "
        "(`eps32`, now the default), on 12 held-out tasks per split, twice as many as "
        "above"),
    ResearchSection(
        "inner_radius", RESEARCH / "inner_radius_pointcircle.json",
        "Training inner steps: radius factors and θ's own cost",
        "the default safety corrections for 30 training iterations, the inner steps of "
        "training shortened on batches that saw no cost (and, in one run, lengthened "
        "when c > 0), as the adaptation steps are, and with θ's own cost as a second "
        "outer constraint; adapted with the former adaptation defaults (16 episodes per "
        "batch) on the 12 held-out tasks per split of the section above, whose Meta-CPO "
        "and CPO runs are the rows `all`, and, with `free0.125`, with an eighth of the "
        "radius on adaptation batches that saw no cost (CPO's θ alike)"),
    ResearchSection(
        "train_limit", RESEARCH / "train_limit_pointcircle.json",
        "Training limit: θ trained at h = 5",
        "the default safety corrections for 30 training iterations at h = 5, the test "
        "limit, instead of the family's h = 10; adapted with the former adaptation "
        "defaults (16 episodes per batch) on the 12 held-out tasks per split of the "
        "section \"Adaptation defaults on 12 held-out tasks per split\", whose rows `all` "
        "are the same settings trained at h = 10"),
    ResearchSection(
        "train_walls", RESEARCH / "train_walls_pointcircle.json",
        "Training walls: θ trained on walls as close as test_tight's",
        "the default safety corrections for 30 training iterations on training tasks "
        "whose wall factor is U(0.28, 0.75) instead of U(0.55, 0.75) (the family override "
        "`ranges`), so that training sees walls as close as the `test_tight` split's; "
        "adapted with the adaptation defaults (32 episodes per batch) on the 12 held-out "
        "tasks per split of the section \"Adaptation defaults on 12 held-out tasks per "
        "split\", whose rows `all+eps32` are the same settings trained on the family's "
        "walls. It ran on another CPU (Intel Xeon) than that section (AMD EPYC); the same "
        "seeds train to other θ on the two, so the baseline from this CPU is Meta-CPO in "
        "the PointCircle comparisons above (the family's walls, 6 tasks per split)"),
    ResearchSection(
        "training_seeds", RESEARCH / "training_seeds_pointcircle.json",
        "Training seeds: θ's cost every 5 iterations, 30 iterations",
        "Meta-CPO and CPO with the `make train` settings and the default safety "
        "corrections on four more seeds than the comparisons' (3–6), on the CPU of the "
        "current PointCircle comparisons (Intel Xeon); no adaptation",
        training_seeds_section),
    ResearchSection(
        "training_seeds_long", RESEARCH / "training_seeds60_pointcircle.json",
        "Training seeds: θ's cost every 5 iterations, 60 iterations",
        "the runs of the section above trained for 60 iterations instead of 30 (the same "
        "seeds, so the first 30 iterations are the same)",
        training_seeds_section),
    ResearchSection(
        "training_seeds_small_radius", RESEARCH / "training_seeds_tr0.003_pointcircle.json",
        "Training seeds: outer trust region 0.003, 30 iterations",
        "the runs of the 30-iteration section above with the outer trust-region radius "
        "0.003 instead of 0.01 (`trust_region_delta`; smaller steps, to damp the swings "
        "of θ's cost)",
        training_seeds_section),
    ResearchSection(
        "training_controls", RESEARCH / "training_controls_pointcircle.json",
        "Training controls: ending training within its limit",
        "CPO and Meta-CPO with the `make train` settings and the default safety "
        "corrections (`all`), against controls of training's outer step, each on top of "
        "them: J_C over the latest 32, 64 or 128 query episodes (`all_win*`, "
        "`train_cost_window`), a setpoint 30% or 50% below h (`all_margin*`, "
        "`train_limit_margin`), the outer radius shrunk from 0.01 to 0.002 over the last "
        "ten iterations (`*anneal`, `trust_region_schedule`), three times the outer radius "
        "when c > 0 (`*outer_rec3`, `outer_recovery_scale`), 8 episodes per task and round "
        "instead of 4 (`*eps8`) and θ's own cost as a second outer constraint "
        "(`*theta*`, `theta_cost_constraint`); CPO on seeds 0–7, Meta-CPO on 0–4, every "
        "variant from the same seeds, Intel Xeon; no adaptation. The summary compares each variant with "
        "`all` on the same seeds; some variants were stopped after fewer seeds when they "
        "did no better",
        training_seeds_section),
    ResearchSection(
        "training_controls_adaptation",
        RESEARCH / "training_controls_adaptation_pointcircle.json",
        "Training controls: adaptation from their θ",
        "the default corrections (`all`) and, for each algorithm, the training controls "
        "that met the training target in the section above (CPO: `all_eps8_outer_rec3`, "
        "Meta-CPO: `all_theta_outer_rec3`), seeds 0–2: the same trained θ (restored from "
        "those runs) adapted with the adaptation defaults on both held-out splits"),
    ResearchSection(
        "return_settings_seeds", RESEARCH / "return_settings_seeds_pointcircle.json",
        "Return settings on three more seeds",
        "the training defaults of that time (`all_eps8_theta_outer_rec3_share_violating`) "
        "and, for Meta-CPO, the same with training's inner steps on cost-free batches at a "
        "quarter of the radius (`*_inner_free`, `inner_cost_free_scale` 0.25), seeds 3–5 "
        "(the comparisons use 0–2), 30 iterations; each θ adapted at the comparisons' "
        "radius (`ad0.003`) with the quarter of the radius on cost-free adaptation batches "
        "that was the default then and with an eighth (`free0.125`); 5 steps on "
        "the comparisons' 6 held-out tasks per split, 20 evaluation episodes per task and "
        "step, AMD EPYC. The `*_inner_free` + `free0.125` row (Meta-CPO) and CPO's "
        "`free0.125` row are the defaults now"),
    ResearchSection(
        "adaptation_check", RESEARCH / "adaptation_check_pointcircle.json",
        "PointCircle: the step check with 64-episode batches, aimed at half the limit",
        "the training defaults (`make train`'s) for seeds 0–5, on another AMD EPYC, where "
        "the same seeds train to other θ than the comparisons'; each θ adapted "
        "at the comparisons' radius on their 6 held-out tasks per split and 20 evaluation "
        "episodes per task and step, with the adaptation defaults (`ad0.003`), with the "
        "setting that met the 80% target on CarCircleHazard (`+bt2+ucb1+fresh1+eps64+"
        "first256+lim0.5`: each step checked on its policy's next batch, 64 episodes per "
        "batch and 256 in the first, every step aimed at half the limit) and with that and "
        "twice the recovery radius (`+rec12`); on `test_tight` also with 8 and 32 times it "
        "(`+rec48`, `+rec192`)"),
    ResearchSection(
        "recovery_path", RESEARCH / "recovery_path_pointcircle.json",
        "PointCircle `test_tight`: how far one recovery step lowers the cost",
        "the θ of the section above (the training defaults, seeds 0–5), each on its 6 "
        "`test_tight` tasks; the pure cost-descent step (CPO's recovery) at several multiples "
        "of the adaptation radius 0.003 (the default recovery radius is 6 times it, `+rec12` "
        "12 times), and the step of 12 × 0.003 taken up to four times in a row on the same "
        "batch, each time re-linearised where the last one ended",
        recovery_path_section),
    ResearchSection(
        "train_margin", RESEARCH / "train_margin_pointcircle.json",
        "PointCircle: training aimed at half the limit",
        "the training defaults with training's outer constraint aimed at half the limit "
        "(`train_limit_margin` 0.5: J_C of θ and of its adapted policies held to 5, the test "
        "limit; every cost still reported against h = 10), seeds 0–5 on the CPU of the "
        "step-check section above, whose θ (the same seeds trained at h) are the baseline; "
        "each θ adapted on the same 6 tasks per split and 20 evaluation episodes per task "
        "and step, with the adaptation defaults (`ad0.003`) and with the check, 64-episode "
        "batches, 256 in the first, half the limit and twice the recovery radius "
        "(`+bt2+ucb1+fresh1+eps64+first256+lim0.5+rec12`)"),
    ResearchSection(
        "observe_cost", RESEARCH / "observe_cost_pointcircle.json",
        "PointCircle: the last step's cost as an input",
        "the training defaults, alone and with `train_limit_margin` 0.5 (`…_margin50`), on "
        "the family with `observe_cost` (the cost of the step that led to each observation "
        "as a 29th input, so the policy can feel the walls it does not see), seeds 0–5 on "
        "the CPU model of the sections on the step check and on training aimed at half the "
        "limit above, whose `ad0.003` rows (the same seeds and settings without the input) "
        "are the baselines; each θ adapted with the adaptation defaults "
        "(`ad0.003`) on the same 6 tasks per split and 20 evaluation episodes per task and "
        "step, the θ of the defaults also on `test_tight` with the step check setting of "
        "the close-walls sections below (`+bt2+ucb1+fresh1+eps64+first256+lim0.5+rec12`)"),
    ResearchSection(
        "train_walls_observe_cost", RESEARCH / "train_walls_observe_cost_pointcircle.json",
        "PointCircle: training walls as close as `test_tight`'s, with the cost as an input",
        "the training defaults on training tasks whose walls lie at U(0.28, 0.75) times the "
        "circle's radius (`env_config` `ranges`; the family's training walls are at "
        "U(0.55, 0.75) times it, `test_tight`'s at U(0.28, 0.36)), with `observe_cost`: "
        "Meta-CPO and CPO seeds 0–5, Meta-TRPO and TRPO seeds 0–2, on the CPU model of the "
        "sections above; the training evaluation is on tasks of these training walls. Each "
        "θ adapted with the adaptation defaults (`ad0.003`) on the same 6 tasks per split "
        "and 20 evaluation episodes per task and step, the Meta-CPO θ and CPO's of seeds 0–2 "
        "also with the step check, 64-episode batches, 256 in the first, half the limit and twice the "
        "recovery radius (`+bt2+ucb1+fresh1+eps64+first256+lim0.5+rec12`). `test_tight`'s "
        "walls lie inside this training range, so it is not tighter than training here, "
        "only its limit is (h = 5 against 10)"),
    ResearchSection(
        "train_walls_defaults", RESEARCH / "train_walls_defaults_pointcircle.json",
        "PointCircle: training walls as close as `test_tight`'s, without the input",
        "the training defaults on the training walls of the section above without "
        "`observe_cost`, its control: Meta-CPO and CPO seeds 0–5, the same tasks "
        "and evaluation episodes; the Meta-CPO θ also adapted on `test_tight` with the step "
        "check setting of the section above (`+bt2+ucb1+fresh1+eps64+first256+lim0.5+rec12`)"),
    ResearchSection(
        "train_walls_tasks8", RESEARCH / "train_walls_tasks8_pointcircle.json",
        "PointCircle: the close training walls with 8 tasks per iteration",
        "the training defaults on the training walls of the two sections above, without "
        "`observe_cost`, with 8 tasks per iteration instead of 4 (`--tasks-per-iteration 8`): "
        "Meta-CPO seeds 0–5 and CPO seeds 0–2, adapted with the adaptation defaults on the "
        "same tasks and evaluation episodes; the section above is its 4-task control"),
    ResearchSection(
        "train_walls_tasks8_check", RESEARCH / "train_walls_tasks8_check_pointcircle.json",
        "PointCircle: the close training walls with 8 tasks, adapted with the step check",
        "the training of the section above again for seeds 0–2 on another CPU (AMD EPYC, "
        "family 25, model 1), where the same seeds train to other θ; each Meta-CPO θ "
        "adapted with the adaptation defaults (`ad0.003`) and with the step-check setting "
        "of the close-walls sections (`+bt2+ucb1+fresh1+eps64+first256+lim0.5+rec12`), "
        "CPO's (trained alike, seeds 0–2) with the step check only, on the same tasks and "
        "evaluation episodes"),
    ResearchSection(
        "tasks8", RESEARCH / "tasks8_pointcircle.json",
        "PointCircle: 8 tasks per iteration",
        "the training defaults on the family's training walls with 8 tasks per iteration "
        "instead of 4: Meta-CPO and CPO seeds 0–5, adapted with the adaptation defaults "
        "(`ad0.003`) on the 6 `test` and 6 `test_tight` tasks and 20 evaluation episodes per "
        "task and step of the step-check section above, whose `ad0.003` rows are Meta-CPO's "
        "4-task control; CPO's is the next section"),
    ResearchSection(
        "tasks4_cpo", RESEARCH / "tasks4_cpo_pointcircle.json",
        "PointCircle: CPO with 4 tasks per iteration, the control of the section above",
        "the training defaults (4 tasks per iteration), seeds 0–2, adapted as in the section "
        "above"),
    ResearchSection(
        "tasks8_eps4", RESEARCH / "tasks8_eps4_pointcircle.json",
        "PointCircle: 8 tasks per iteration at the defaults' episodes per iteration",
        "the training defaults with 8 tasks per iteration and 4 episodes per task and round "
        "instead of 4 and 8 (the same 32 episodes per round): Meta-CPO and CPO seeds 0–2, "
        "adapted with the adaptation defaults on the tasks and evaluation episodes of the two "
        "sections above"),
    ResearchSection(
        "matched_adaptation", RESEARCH / "matched_adaptation_pointcircle.json",
        "PointCircle: adapting with training's own inner step",
        "the training defaults, Meta-CPO and CPO seeds 0–2, each θ adapted from the same "
        "checkpoint with the adaptation defaults (`ad0.003`), with training's own inner step "
        "(`eps8+ad0.003+free0.25+rec1+win0`: 8 episodes per batch, radius 0.003, a quarter "
        "of it on a batch that saw no cost, c from the batch alone), with that step at radius "
        "0.01, and with the adaptation defaults whose cost-free steps take radius 0.0025 "
        "instead of 0.000375 (`ad0.003+free0.8333`), on the comparisons' 6 tasks per split "
        "and 20 evaluation episodes per task and step"),
    ResearchSection(
        "constrainedbandit_adaptation", RESEARCH / "constrainedbandit_adaptation.json",
        "ConstrainedBandit: Meta-CPO against CPO where each task hides its reward",
        "the training defaults on ConstrainedBandit (4 arms, 20 pulls per episode, the "
        "observation only the time: a task's reward and cost means are hidden from the "
        "policy), 50 iterations, seeds 0–4, each θ adapted from the same checkpoint at "
        "radius 0.003, 0.03 and 0.3 on 12 held-out tasks per split, 40 evaluation episodes "
        "per task and step; split `train`: fresh tasks of the training distribution at its "
        "limit h = 10, where θ starts within h and the steps learn each task's reward; "
        "`test`: riskier arms at h = 5"),
    ResearchSection(
        "constrainedbandit_inner0.03", RESEARCH / "constrainedbandit_inner0.03.json",
        "ConstrainedBandit: training's inner radius 0.03",
        "the section above with Meta-CPO's training inner steps at radius 0.03 instead of "
        "0.003, adapted at 0.03 on the same `train` tasks and evaluation episodes (CPO has "
        "no inner step: its θ is the section above's)"),
    ResearchSection(
        "constrainedbandit_inner0.3", RESEARCH / "constrainedbandit_inner0.3.json",
        "ConstrainedBandit: training's inner radius 0.3",
        "the section above with Meta-CPO's training inner steps at radius 0.3, adapted at "
        "0.3 on the same `train` tasks and evaluation episodes"),
    ResearchSection(
        "pointnav_hidden_layout", RESEARCH / "pointnav_hidden_layout.json",
        "PointNav with its layout hidden: Meta-CPO against CPO",
        "the training defaults on PointNav with `observe_layout` false (the policy sees only "
        "its position, so a task's goal and the hazard near the path to it are known only "
        "from rewards and costs), 50 iterations, seeds 0–4, each θ adapted from the same "
        "checkpoint at radius 0.03 and 0.3 on 12 held-out tasks per split, 40 evaluation "
        "episodes per task and step; split `train`: fresh tasks of the training distribution "
        "at h = 10; `test`: farther goals and larger hazards at h = 5"),
    ResearchSection(
        "pointnav_hidden_layout_inner0.3", RESEARCH / "pointnav_hidden_layout_inner0.3.json",
        "PointNav with its layout hidden: Meta-CPO's training inner radius 0.3",
        "the section above with Meta-CPO's training inner steps at radius 0.3 instead of "
        "0.003, adapted at 0.3 on the same tasks and evaluation episodes (CPO, which has no "
        "inner step: the section above)"),
    ResearchSection(
        "pointnav_hidden_layout_trpo", RESEARCH / "pointnav_hidden_layout_trpo.json",
        "PointNav with its layout hidden: Meta-TRPO against TRPO",
        "the unconstrained check of the two sections above: Meta-TRPO (training inner steps "
        "at radius 0.3) and TRPO, both blind to the cost, 50 iterations, seeds 0–4, adapted "
        "at radius 0.3 on the same `train` tasks and evaluation episodes"),
    ResearchSection(
        "pointnav_hidden_layout_slack", RESEARCH / "pointnav_hidden_layout_slack.json",
        "PointNav with its layout hidden: Meta-CPO against CPO where the limit never binds",
        "Meta-CPO (training inner radius 0.3) and CPO trained and adapted at h = 60, a limit "
        "no 60-step episode can exceed, otherwise as the section above: seeds 0–4, adapted "
        "at radius 0.3 on the same `train` tasks and evaluation episodes"),
    ResearchSection(
        "pointnav_hidden_layout_slack_h10", RESEARCH / "pointnav_hidden_layout_slack_h10.json",
        "PointNav with its layout hidden: the same θ adapted under h = 10",
        "the θ of the section above (trained at h = 60; equal training evaluations), adapted "
        "at radius 0.3 under the family's limit h = 10, which binds, on the same tasks and "
        "evaluation episodes"),
    ResearchSection(
        "carcirclehazard_step0_splits", RESEARCH / "carcirclehazard_step0_splits.json",
        "CarCircleHazard: θ's cost by hazard density, before adaptation",
        "the settings of the CarCircleHazard section below (the defaults and "
        "`…_margin50`; θ restored from the checkpoints of those runs), here evaluated "
        "without adaptation (step 0 only) on 6 tasks of each held-out split: `test` (a "
        "wider circle, 10–12 hazards in [−1.8, 1.8]²) and `test_tight` (the training "
        "circle, 9–11 hazards in [−1.4, 1.4]², about twice the training density of 4–6); "
        "the `test` costs are those of the section below, reproduced by the same common "
        "random numbers"),
    ResearchSection(
        "carcirclehazard_dense_training",
        RESEARCH / "carcirclehazard_dense_training.json",
        "CarCircleHazard: θ trained on denser hazards",
        "the training defaults of the CarCircleHazard section below on training tasks "
        "with U{4..11} hazards instead of U{4..6} (the family override `ranges`), so that "
        "training sees up to about twice its hazard density; adapted with the adaptation "
        "defaults on the same 6 `test` tasks, seeds and evaluation episodes as that "
        "section, whose default rows are the same settings trained on U{4..6}. The "
        "training evaluation is on tasks of this wider training distribution. θ's step-0 "
        "costs on `test_tight` are in "
        "`research/results/carcirclehazard_dense_training_step0.json`"),
    ResearchSection(
        "carcirclehazard_dense_training_100it",
        RESEARCH / "carcirclehazard_dense_training_100it.json",
        "CarCircleHazard: θ trained on denser hazards for 100 iterations",
        "the training defaults on the U{4..11} training hazards of the section above for "
        "100 iterations instead of 50 (the same seeds, test tasks and evaluation episodes; "
        "its training evaluations at iterations 25 and 50 equal that run's), adapted with "
        "the adaptation defaults and with the check on the batch's upper bound and the next "
        "step from a fresh batch (`bt2+ucb1+fresh1`); seeds 3 and 4 trained alike and "
        "adapted with that check only. The rows `+ad0.0015` (every step at half the inner "
        "radius) and `+room1` (a step below its limit capped so that its first-order cost "
        "rise is at most the room h − J_C) adapt the same five θ with the check on the same "
        "tasks and evaluation episodes"),
    ResearchSection(
        "carcirclehazard_dense_training_100it_fresh_tasks",
        RESEARCH / "carcirclehazard_dense_training_100it_fresh_tasks.json",
        "CarCircleHazard: the 100-iteration θ on fresh test tasks",
        "the five θ of the section above, adapted with the check (`bt2+ucb1+fresh1`) and "
        "with the check and the room cap (`+room1`) on 6 other `test` tasks (task seed "
        "54321 instead of 12345), with 20 evaluation episodes per task and step"),
    ResearchSection(
        "carcirclehazard_dense_training_200it",
        RESEARCH / "carcirclehazard_dense_training_200it.json",
        "CarCircleHazard: θ trained on denser hazards for 200 iterations",
        "the settings of the 100-iteration section above, seeds 0–2 trained on from its "
        "checkpoints to 200 iterations (`--continue-from 100`), adapted with the check "
        "(`bt2+ucb1+fresh1`) on the same 6 `test` tasks and evaluation episodes"),
    ResearchSection(
        "carcirclehazard_dense_training_200it_fresh_tasks",
        RESEARCH / "carcirclehazard_dense_training_200it_fresh_tasks.json",
        "CarCircleHazard: the 200-iteration θ on fresh test tasks",
        "the three θ of the section above, adapted with the check on the 6 fresh `test` "
        "tasks (task seed 54321) of the 100-iteration θ's fresh-task section"),
    ResearchSection(
        "carcirclehazard_curriculum", RESEARCH / "carcirclehazard_curriculum.json",
        "CarCircleHazard: a curriculum, the family's own layouts, then denser hazards",
        "seeds 0–2 trained 50 iterations on the family's U{4..6} hazards (the θ of the "
        "section 'Meta-CPO against an untrained policy'), then 50 more on U{4..11} "
        "(`--continue-from 50 --continue-env-config '{}'`), adapted with the check "
        "(`bt2+ucb1+fresh1`) on the 6 `test` tasks and evaluation episodes of the "
        "100-iteration dense section; the second row adds the room cap (`room1`), measured "
        "after the first, the third aims every adaptation step at half the limit "
        "(`lim0.5`, `adaptation_limit_margin`; costs still scored against h = 5)"),
    ResearchSection(
        "carcirclehazard_curriculum_fresh_tasks",
        RESEARCH / "carcirclehazard_curriculum_fresh_tasks.json",
        "CarCircleHazard: the curriculum's θ on fresh test tasks",
        "the three θ of the section above, adapted with the check (and, second row, the "
        "room cap; third row, every step aimed at half the limit) on the 6 fresh `test` "
        "tasks (task seed 54321) of the 100-iteration θ's fresh-task section"),
    ResearchSection(
        "carcirclehazard_curriculum_eval100",
        RESEARCH / "carcirclehazard_curriculum_eval100.json",
        "CarCircleHazard: the curriculum's adapted policies on 100 evaluation episodes",
        "the first row of the curriculum section (the check, `bt2+ucb1+fresh1`, on its 6 "
        "`test` tasks) run again with 100 evaluation episodes per task and step instead of "
        "20; its learning batches and rejections equal that section's, so every adapted "
        "policy is the same and only the evaluation is longer"),
    ResearchSection(
        "carcirclehazard_curriculum_eps64", RESEARCH / "carcirclehazard_curriculum_eps64.json",
        "CarCircleHazard: 64 episodes per adaptation batch, on 100 evaluation episodes",
        "the curriculum's recipe (seeds 0–2, 50 iterations on U{4..6} hazards, then 50 on "
        "U{4..11}) trained again on another CPU, where the same seeds train to other θ; each "
        "θ adapted with the check (`bt2+ucb1+fresh1`) and with the check on 64 episodes per "
        "adaptation batch instead of 32 (`+eps64`), on the 6 `test` tasks of the curriculum "
        "section, every step scored on 100 evaluation episodes per task; the third row adds "
        "a first adaptation batch of 256 episodes per task (`+first256`, "
        "`adaptation_first_episodes_per_task`; the later batches keep 64), the fourth also "
        "aims every step at half the limit (`+lim0.5`; costs still scored against h = 5)"),
    ResearchSection(
        "carcirclehazard_curriculum_eps64_fresh_tasks",
        RESEARCH / "carcirclehazard_curriculum_eps64_fresh_tasks.json",
        "CarCircleHazard: 64 episodes per adaptation batch on fresh test tasks",
        "the three θ of the section above, adapted with the check on 64 episodes per "
        "adaptation batch on the 6 fresh `test` tasks (task seed 54321) of the curriculum's "
        "fresh-task section, every step scored on 100 evaluation episodes per task, "
        "(second row) with a first adaptation batch of 256 episodes per task as well, and "
        "(third row) with every step also aimed at half the limit "
        "(`+lim0.5`; costs still scored against h = 5)"),
    ResearchSection(
        "pointbutton_boundary", RESEARCH / "pointbutton_boundary.json",
        "PointButton with a boundary: θ trained and adapted with it",
        "the training defaults of the PointButton section below on the family with a "
        "boundary (`env_config` `{\"boundary\": 0.2}`: a step that ends beyond extent + 0.2 "
        "costs 1 more, on training and test tasks alike), seeds 0–2, 60 iterations (θ "
        "evaluated at 30 and 60), adapted with the check (`bt2+ucb1+fresh1`) on the 6 "
        "`test` tasks and evaluation episodes of that section; costs include the boundary's"),
    ResearchSection(
        "pointbutton_boundary_plain", RESEARCH / "pointbutton_boundary_plain.json",
        "PointButton: the boundary-trained θ adapted without the boundary",
        "the training defaults on the family with the boundary, as in the section above "
        "(the same three θ; the training evaluation is that section's, boundary included), "
        "then adapted with the check and evaluated on the family as it is "
        "(`--continue-from 60 --continue-env-config '{\"boundary\": 0.2}' --env-config "
        "'{}'`: no more training), on the tasks and evaluation episodes of the PointButton "
        "section below, whose untrained policy ran the same episodes"),
    ResearchSection(
        "pointbutton_retrained", RESEARCH / "pointbutton_retrained.json",
        "PointButton: 64 episodes per adaptation batch and a 256-episode first batch",
        "the training defaults of the PointButton section below trained again on another "
        "CPU, where the same seeds train to other θ, for seeds 0–5 (30 iterations each); "
        "each θ adapted with the check aimed at half the limit (`bt2+ucb1+fresh1+lim0.5`, "
        "32 episodes per batch: that section's last row) and with 64 episodes per adaptation "
        "batch and a first batch of 256 (`+eps64+first256`, as on CarCircleHazard), on the "
        "6 `test` tasks and 20 evaluation episodes per task and step of that section; the "
        "untrained θ (seeds 0–2) adapted with the latter on the same tasks and episodes; "
        "each θ also adapted with either setting and twice the recovery radius "
        "(`+rec12`)"),
)


# -- the investigation --------------------------------------------------------------------------
def load_investigation(results: Path) -> list[dict]:
    """The surrogate checks in ``<results>/investigation/*.json``."""
    return [json.loads(path.read_text())
            for path in sorted((results / "investigation").glob("*.json"))]


def surrogate_section(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per policy, task and batch size: predicted vs realised cost change."""
    if not checks:
        return []
    s = checks[0]["settings"]
    lines = [
        "### Is the cost surrogate predictive?", "",
        f"`python research/surrogate_check.py` ({checks[0]['family']}): one "
        f"CPO recovery step (pure cost descent, KL radius {s['delta']}) from a batch of the "
        "given size; *predicted* is the surrogate's bᵀx, *realised* the change of the mean "
        f"episode cost over {s['eval_episodes']} fresh episodes (the same env and noise "
        "seeds before and after; ± standard error); cos is the cosine between the cost "
        "gradients of two disjoint batches of that size (– where one of them saw no cost, "
        "so b = 0 and the step is no step).", "",
        "| policy | task (radius, factor) | cost before | batch episodes | predicted | "
        "realised | cos(b, b′) | commit |", "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for check in checks:
        for task in check["tasks"]:
            p = task["task"]["params"]
            name = ", ".join(f"{v:.2f}" for v in p.values())
            for st in task["steps"]:
                lines.append(
                    f"| {check['policy']} | {name} | {task['cost_before']:.1f} ± "
                    f"{task['cost_before_se']:.1f} | {st['batch_episodes']} | "
                    f"{st['predicted_change']:+.1f} | {st['realised_change']:+.1f} ± "
                    f"{st['realised_change_se']:.1f} | "
                    f"{_signed(st['gradient_cosine_disjoint_batch'])} | "
                    f"`{check['provenance']['commit']}` |")
    return lines + [""]


def _signed(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:+.2f}"


def investigation_section(results: Path) -> list[str]:
    """The hand-written notes (``investigation/NOTES.md``, words only) and the surrogate
    checks."""
    checks = load_investigation(results)
    notes = results / "investigation" / "NOTES.md"
    if not (checks or notes.exists()):
        return []
    lines = ["## Investigation", ""]
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return lines + surrogate_section(checks)


# -- the page -----------------------------------------------------------------------------------
INTRO = (
    "Meta-CPO, Meta-TRPO, CPO and TRPO are trained with the same seeds and training tasks at "
    "the training cost limit; θ is then evaluated on fixed training tasks (does training meet "
    "its limit?), and each algorithm adapts to the same held-out tasks at the tighter test "
    "limit. Step 0 is the trained policy itself; step s uses the parameters after s "
    "adaptation steps (the inner update for the meta algorithms, the CPO / TRPO update for "
    "the others). Every step is scored on its own **evaluation episodes**: fresh episodes "
    "per task, apart from the batches the steps learn from, with the same env seeds and "
    "action-noise streams for every step and algorithm (common random numbers); the "
    "evaluated policy samples its actions. A task is *within the limit* when its evaluation "
    "mean episode cost is ≤ h, and *certified* when the one-sided 95% upper confidence "
    "bound of that mean (Student t on the episode costs; a few bursty episodes make the "
    "spread large and the t bound honest about it) is ≤ h. Two held-out splits: `test` "
    "(the paper's, walls wider than in training) and `test_tight` (walls inside the "
    "training range: a policy that only keeps its training limit violates at step 0 and "
    "has to adapt its way into safety).")


def render(families: Mapping[str, Mapping[str, Any]], page_dir: Path,
           draw: bool = True, results: Optional[Path] = None,
           ablation: Optional[Path] = None, training_ledger: Optional[Path] = None,
           batch_sweep: Optional[Path] = None, input_ablation: Optional[Path] = None,
           research: Optional[Mapping[str, Path]] = None,
           other_families: Sequence[Path] = ()) -> str:
    """The page (and, with ``draw``, its figures next to each comparison's JSON and the
    calibration figure in ``results``); with ``results``, also the investigation; with
    ``ablation``, the safety corrections' ablation table; with ``training_ledger``, the
    calibration of CPO's training steps; with ``batch_sweep``, the batch-size table; with
    ``input_ablation``, the observation filter's and the critics' ablation; ``research``
    maps the keys of ``RESEARCH_SECTIONS`` to the JSON shown (a key left out: no section);
    with ``other_families``, Meta-CPO on each family against an untrained policy."""
    from metacpo_rllib.experiments.plots import adaptation_figure, training_figure

    lines = [
        "# Results: adaptable safety on held-out tasks", "", INTRO, "",
        "Generated by `python -m research.results_page` from "
        "`docs/results/<name>/comparison.json` (written by `metacpo compare`); do not edit "
        "by hand. Earlier comparisons that were scored on the learning batches are kept in "
        "`docs/results/batch-scored/` and are not shown: their fractions within the limit "
        "are optimistic. Comparisons run with defaults that have since changed are kept in "
        "`docs/results/superseded/` and are not shown either.", "",
    ]
    if not families:
        return "\n".join(lines + ["No comparison runs found.", ""])
    lines += targets_section(families)
    for name, data in families.items():
        folder = Path(data["dir"])
        figures = {"training": folder / "training.png", "adaptation": folder / "adaptation.png"}
        if draw:
            training_figure(data["runs"], figures["training"],
                            title=f"{name}: training (mean ± std over seeds)")
            adaptation_figure(data["runs"], figures["adaptation"],
                              title=f"{name}: adaptation on held-out `{split_of(data)}` tasks "
                                    "(evaluation episodes)")
        rel = {k: _relative(v, page_dir) for k, v in figures.items()}
        lines += comparison_section(name, data, rel)
    figure = None
    if results is not None:
        path = results / "calibration.png"
        if draw:
            calibration_figure(families, path)
        figure = _relative(path, page_dir)
    lines += calibration_section(families, figure, training_ledger)
    if ablation is not None:
        lines += ablation_section(ablation)
    if input_ablation is not None:
        lines += ablation_section(
            input_ablation, "Observation filter and critics: ablation",
            "the default safety corrections (`all`) and, on top of them, the running "
            "observation filter or the learned critics (with and without the task's layout "
            "as privileged critic input), each run over 5 adaptation steps on both "
            "held-out splits")
    for section in RESEARCH_SECTIONS:
        if research and section.key in research:
            lines += section.show(research[section.key], section.title, section.what)
    for path in other_families:
        lines += other_family_section(path)
    if batch_sweep is not None:
        lines += batch_size_section(batch_sweep)
    if results is not None:
        lines += investigation_section(results)
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="folder with <name>/comparison.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the page to write")
    parser.add_argument("--readme", type=Path, default=None,
                        help=f"also rewrite the targets table of this README (`make "
                             f"results-page`: {DEFAULT_README.name}); default: none")
    parser.add_argument("--ablation", type=Path, default=DEFAULT_ABLATION,
                        help="safety_ablation.py's JSON ('' : no ablation section)")
    parser.add_argument("--training-ledger", type=Path, default=DEFAULT_TRAINING_LEDGER,
                        help="safety_ablation.py --train-eval-interval 1 JSON ('': none)")
    parser.add_argument("--batch-sweep", type=Path, default=DEFAULT_BATCH_SWEEP,
                        help="metacpo sweep --json of episodes_per_task ('': none)")
    parser.add_argument("--input-ablation", type=Path, default=DEFAULT_INPUT_ABLATION,
                        help="safety_ablation.py's JSON of the observation filter and "
                             "critics variants ('': none)")
    for section in RESEARCH_SECTIONS:
        parser.add_argument(f"--{section.key.replace('_', '-')}", dest=section.key,
                            type=Path, default=section.default,
                            help=f"the research JSON of \"{section.title}\" ('': none)")
    parser.add_argument("--other-families", type=Path, nargs="*",
                        default=list(DEFAULT_OTHER_FAMILIES),
                        help="safety_ablation.py's JSON of Meta-CPO on a family and its "
                             "untrained policy, one section each (none: no sections)")
    args = parser.parse_args(argv)
    optional = {k: (p if str(p) not in ("", ".") else None)
                for k, p in (("ablation", args.ablation),
                             ("training_ledger", args.training_ledger),
                             ("batch_sweep", args.batch_sweep),
                             ("input_ablation", args.input_ablation))}
    chosen = vars(args)
    research = {s.key: chosen[s.key] for s in RESEARCH_SECTIONS
                if str(chosen[s.key]) not in ("", ".")}
    families = load(args.results)
    page = render(families, args.out.parent, results=args.results,
                  other_families=args.other_families, research=research, **optional)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out}")
    if args.readme is not None:
        args.readme.write_text(with_targets_table(args.readme.read_text(), families))
        print(f"wrote the targets table of {args.readme}")
    return args.out


if __name__ == "__main__":
    main()
