"""Renders docs/RESULTS.md and its figures from the comparison JSON of ``metacpo compare`` runs.

    python -m metacpo_rllib.experiments.results_page [--results docs/results] [--out docs/RESULTS.md]

Reads ``<results>/<Family>/comparison.json`` (any number of families), writes
``<results>/<Family>/training.png`` and ``adaptation.png`` and the page. Every number on
the page comes from those files.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = REPO / "docs" / "results"
DEFAULT_OUT = REPO / "docs" / "RESULTS.md"
ALGORITHMS = ("MetaCPO", "MetaTRPO", "CPO", "TRPO")
#: Adaptation steps shown in the tables (those a run has).
REPORT_STEPS = (0, 1, 3, 5)
#: The targets of the comparison (checked on the family named here).
TARGET_FAMILY = "PointCircle"
TARGET_WITHIN = 0.8        # Meta-CPO: fraction of test tasks within h ...
TARGET_MAX_STEP = 3        # ... after at most this many adaptation steps
TARGET_RETURN_RATIO = 0.9  # Meta-CPO's return >= this x Meta-TRPO's (same step)
FAMILY_ORDER = ("PointCircle", "CarCircleHazard", "PointButton")


def load(results: Path) -> dict[str, dict[str, Any]]:
    """folder name -> comparison JSON, for every ``<results>/<name>/comparison.json``
    (the folder is the family, or another name for a second run on a family)."""
    found = {path.parent.name: {**json.loads(path.read_text()), "dir": path.parent}
             for path in results.glob("*/comparison.json")}
    order = {name: i for i, name in enumerate(FAMILY_ORDER)}
    return dict(sorted(found.items(),
                       key=lambda kv: (order.get(kv[1]["family"], len(order)), kv[0])))


# -- statistics ---------------------------------------------------------------------------------
def per_seed(seeds: Sequence[Mapping[str, Any]], key: str, step: int) -> list[float]:
    """One value per seed at adaptation ``step``: ``return`` / ``cost`` (means over test
    tasks) or ``within`` (fraction of test tasks whose mean episode cost is <= the limit)."""
    out = []
    for s in seeds:
        adapt = s.get("adapt")
        if not adapt or step >= len(adapt["steps"]):
            continue
        if key == "within":
            out.append(1.0 - float(adapt["violation_rate"][step]))
        else:
            out.append(float(adapt[{"return": "mean_return", "cost": "mean_cost"}[key]][step]))
    return [v for v in out if not math.isnan(v)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof = 1; 0 for one value; NaN for none)."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def pm(values: Sequence[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def steps_of(data: Mapping[str, Any]) -> list[int]:
    adapt_steps = int(data["adaptation"]["adapt_steps"])
    return [s for s in REPORT_STEPS if s <= adapt_steps]


# -- the targets --------------------------------------------------------------------------------
def check_targets(data: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison targets on one family's runs.

    Meta-CPO is *within* at the first step s in 1..3 where the mean (over seeds) fraction
    of test tasks within the limit is >= 0.8 (else at the step with the highest fraction);
    at that step its mean return must be >= 0.9 x Meta-TRPO's, and Meta-TRPO and TRPO must
    each violate the limit on more than half of the test tasks (mean over seeds).
    """
    runs = data["runs"]
    max_step = min(TARGET_MAX_STEP, int(data["adaptation"]["adapt_steps"]))
    within = {s: mean_std(per_seed(runs.get("MetaCPO", []), "within", s))[0]
              for s in range(1, max_step + 1)}
    hits = [s for s, v in within.items() if v >= TARGET_WITHIN]
    step = hits[0] if hits else max(within, key=lambda s: (within[s], -s))
    ret = {a: mean_std(per_seed(runs.get(a, []), "return", step))[0] for a in ALGORITHMS}
    violating = {a: 1.0 - mean_std(per_seed(runs.get(a, []), "within", step))[0]
                 for a in ("MetaTRPO", "TRPO")}
    ratio = ret["MetaCPO"] / ret["MetaTRPO"] if ret["MetaTRPO"] > 0 else math.nan
    cost = {a: mean_std(per_seed(runs.get(a, []), "cost", step))[0] for a in ALGORITHMS}
    return {
        "step": step, "within": within[step], "within_met": bool(hits),
        "return_ratio": ratio,
        "return_met": bool(ret["MetaCPO"] >= TARGET_RETURN_RATIO * ret["MetaTRPO"]),
        "returns": ret, "costs": cost, "violating": violating,
        "violating_met": all(v > 0.5 for v in violating.values()),
    }


def _met(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def targets_section(name: str, data: Mapping[str, Any]) -> list[str]:
    t = check_targets(data)
    ret = t["returns"]
    ratio = "–" if math.isnan(t["return_ratio"]) else f"{t['return_ratio']:.2f}"
    return [
        f"## Targets: {_title(name, data)}", "",
        "| target | measured | |", "|---|---|---|",
        f"| Meta-CPO within h on ≥ {TARGET_WITHIN:.0%} of test tasks after ≤ "
        f"{TARGET_MAX_STEP} adaptation steps | {t['within']:.0%} of tasks at step {t['step']} "
        f"| {_met(t['within_met'])} |",
        f"| Meta-CPO return ≥ {TARGET_RETURN_RATIO:.0%} of Meta-TRPO's (step {t['step']}) | "
        f"{ret['MetaCPO']:.2f} vs {ret['MetaTRPO']:.2f} (ratio {ratio}) | "
        f"{_met(t['return_met'])} |",
        f"| Meta-TRPO and TRPO violate h on most test tasks (step {t['step']}) | "
        f"Meta-TRPO {t['violating']['MetaTRPO']:.0%}, TRPO {t['violating']['TRPO']:.0%} "
        f"of tasks | {_met(t['violating_met'])} |",
        f"| (context, no target) mean episode cost at step {t['step']}, test limit h = "
        f"{_limit(data, 'test_limit'):g} | Meta-CPO {t['costs']['MetaCPO']:.2f}, Meta-TRPO "
        f"{t['costs']['MetaTRPO']:.2f}, CPO {t['costs']['CPO']:.2f}, TRPO "
        f"{t['costs']['TRPO']:.2f} | |", "",
    ]


def _limit(data: Mapping[str, Any], key: str) -> float:
    """The mean ``train_limit`` / ``test_limit`` of the runs (NaN without runs)."""
    runs = [s for seeds in data["runs"].values() for s in seeds]
    return float(np.nanmean([s[key] for s in runs])) if runs else math.nan


# -- one family ---------------------------------------------------------------------------------
def _budget(data: Mapping[str, Any]) -> list[str]:
    training, adaptation = data["training"], data["adaptation"]
    prov = data.get("provenance", {})
    steps = {a: int(np.mean([s["env_steps"] for s in seeds])) for a, seeds in data["runs"].items()
             if seeds and "env_steps" in seeds[0]}
    train_limit, test_limit = _limit(data, "train_limit"), _limit(data, "test_limit")
    lines = [
        f"- **Training:** {data['iterations']} iterations at h = {train_limit:g}; per iteration "
        f"{training.get('tasks_per_iteration', '?')} training tasks × "
        f"{training.get('episodes_per_task', '?')} episodes per sampling round (two rounds "
        "for Meta-CPO / Meta-TRPO with K = 1, one for CPO / TRPO); settings "
        f"`{json.dumps(training, sort_keys=True)}`"
        + (f", env overrides `{json.dumps(data['env_config'], sort_keys=True)}`"
           if data.get("env_config") else "") + ".",
        "- **Env steps per trial (training):** "
        + ", ".join(f"{a} {n:,}" for a, n in steps.items()) + ".",
        f"- **Adaptation:** {adaptation['test_tasks']} held-out test tasks (task seed "
        f"{adaptation['task_seed']}) at h = {test_limit:g}, {adaptation['adapt_steps']} "
        "adaptation steps, "
        f"{adaptation.get('episodes_per_task') or training.get('episodes_per_task', '?')} "
        "episodes per task and step.",
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
    return name if name == data["family"] else f"{name} ({data['family']})"


def family_section(name: str, data: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    """Budget, provenance, the three tables (return, cost, fraction within the limit at
    the reported steps) and the figures of one family."""
    steps = steps_of(data)
    runs = data["runs"]
    head = "| algorithm | " + " | ".join(f"step {s}" for s in steps) + " | seeds |"
    rule = "|---|" + "---:|" * (len(steps) + 1)
    lines = [f"## {_title(name, data)}", "", *_budget(data), ""]
    titles = {"return": "Mean episode return on the test tasks",
              "cost": "Mean episode cost on the test tasks",
              "within": "Fraction of test tasks within the limit"}
    for key, title in titles.items():
        lines += [f"**{title}** (mean ± std over seeds)", "", head, rule]
        for algorithm in ALGORITHMS:
            seeds = [s for s in runs.get(algorithm, []) if s.get("adapt")]
            cells = [pm(per_seed(seeds, key, s)) for s in steps]
            lines.append(f"| {algorithm} | " + " | ".join(cells) + f" | {len(seeds)} |")
        lines.append("")
    lines += [f"![{name} training]({figures['training']})", "",
              f"![{name} adaptation]({figures['adaptation']})", ""]
    return lines


# -- the investigation --------------------------------------------------------------------------
def load_investigation(results: Path) -> tuple[list[dict], list[dict]]:
    """(surrogate checks, sweeps) from ``<results>/investigation/*.json``."""
    checks, sweeps = [], []
    for path in sorted((results / "investigation").glob("*.json")):
        data = json.loads(path.read_text())
        (sweeps if "rows" in data else checks).append(data)
    return checks, sweeps


def surrogate_section(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per policy, task and batch size: predicted vs realised cost change."""
    if not checks:
        return []
    s = checks[0]["settings"]
    lines = [
        "### Is the cost surrogate predictive?", "",
        f"`python -m metacpo_rllib.experiments.surrogate_check` ({checks[0]['family']}): one "
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


def sweep_section(sweep: Mapping[str, Any]) -> list[str]:
    """One row per trial: the grid values, final training cost, test numbers per step."""
    keys = [k for k in sweep["grid"] if k != "seed"] + ["seed"]
    steps = [st for st in REPORT_STEPS if st <= int(sweep["adaptation"]["adapt_steps"])]
    prov = sweep["provenance"]
    lines = [
        f"### Tune sweep `{sweep['name']}`", "",
        f"{sweep['algorithms'][0] if len(sweep['algorithms']) == 1 else sweep['algorithms']} "
        f"on {sweep['family']}, {sweep['iterations']} iterations, fixed settings "
        f"`{json.dumps(sweep['training'], sort_keys=True)}`, adaptation on "
        f"{sweep['adaptation']['test_tasks']} held-out tasks (task seed "
        f"{sweep['adaptation']['task_seed']}). Command `{prov['command']}`, commit "
        f"`{prov['commit']}`.", "",
        "| " + " | ".join(keys) + " | train cost (last iter.) | "
        + " | ".join(f"within, step {st}" for st in steps) + " | "
        + " | ".join(f"return, step {st}" for st in steps) + " |",
        "|" + "---|" * len(keys) + "---:|" * (1 + 2 * len(steps)),
    ]
    for row in sweep["rows"]:
        adapt = row.get("adapt") or {}
        within = [1.0 - v for v in adapt.get("violation_rate", [])]
        ret = adapt.get("mean_return", [])
        cell = lambda xs, st: f"{xs[st]:.2f}" if st < len(xs) else "–"  # noqa: E731
        lines.append("| " + " | ".join(str(row.get(k)) for k in keys)
                     + f" | {row['train_cost']:.1f} | "
                     + " | ".join(cell(within, st) for st in steps) + " | "
                     + " | ".join(cell(ret, st) for st in steps) + " |")
    return lines + [""]


def investigation_section(results: Path) -> list[str]:
    """The hand-written notes (``investigation/NOTES.md``, words only) and the measured tables."""
    checks, sweeps = load_investigation(results)
    notes = results / "investigation" / "NOTES.md"
    if not (checks or sweeps or notes.exists()):
        return []
    lines = ["## Investigation", ""]
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    lines += surrogate_section(checks)
    for sweep in sweeps:
        lines += sweep_section(sweep)
    return lines


# -- the page -----------------------------------------------------------------------------------
def render(families: Mapping[str, Mapping[str, Any]], page_dir: Path,
           draw: bool = True, results: Optional[Path] = None) -> str:
    """The page (and, with ``draw``, its figures next to each family's JSON); with
    ``results``, also the investigation found under ``results/investigation``."""
    from metacpo_rllib.experiments.plots import adaptation_figure, training_figure

    lines = [
        "# Results: adaptable safety on held-out tasks", "",
        "Meta-CPO, Meta-TRPO, CPO and TRPO are trained with the same seeds and training "
        "tasks at the training cost limit, then each adapts to the same held-out test tasks "
        "(a different task distribution) at the tighter test limit. Step 0 is the trained "
        "policy itself; step s samples with the parameters after s adaptation steps (the "
        "inner update for the meta algorithms, the CPO / TRPO update for the others). "
        "Return and cost are per-episode means over the test tasks; a task is *within the "
        "limit* when its mean episode cost at that step is ≤ h.", "",
        "Generated by `python -m metacpo_rllib.experiments.results_page` from "
        "`docs/results/<family>/comparison.json` (written by `metacpo compare`); do not edit "
        "by hand.", "",
    ]
    if not families:
        return "\n".join(lines + ["No comparison runs found.", ""])
    for name, data in families.items():
        if data["family"] == TARGET_FAMILY:
            lines += targets_section(name, data)
    for name, data in families.items():
        folder = Path(data["dir"])
        figures = {"training": folder / "training.png", "adaptation": folder / "adaptation.png"}
        if draw:
            training_figure(data["runs"], figures["training"],
                            title=f"{name}: training (mean ± std over seeds)")
            adaptation_figure(data["runs"], figures["adaptation"],
                              title=f"{name}: adaptation on held-out tasks at the test limit")
        rel = {k: _relative(v, page_dir) for k, v in figures.items()}
        lines += family_section(name, data, rel)
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
                        help="folder with <family>/comparison.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the page to write")
    args = parser.parse_args(argv)
    page = render(load(args.results), args.out.parent, results=args.results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
