"""Meta-CPO's `test` return against CPO's over every run of the defaults on record.

Each PointCircle run on record that trained with the training defaults (4 tasks × 8 episodes
per iteration, 30 iterations) and adapted with the adaptation defaults on the same 6 `test`
tasks (task seed 12345) and 20 evaluation episodes per task and step (common random
numbers) gives one row of mean evaluation returns at adaptation steps 0–5. The runs differ in
seed and machine, so each is one draw of the trained θ. Per step this prints and writes,
for each algorithm, the mean and the std over runs, and the difference Meta-CPO − CPO with
its two-sided 95% Welch interval, once for the return and once for the *gain* (return at
step s minus step 0 of the same run: the adaptation itself, paired within each run).

It does the same for the θ of ``MATCHED_FILE`` adapted with each of ``OTHER_SETTINGS``
(CPO and Meta-CPO trained with the defaults, each θ also adapted with the defaults), and
per θ the gain of that setting minus the gain of the defaults (paired on θ, tasks and
evaluation episodes).

    python research/return_gap.py [--out research/results/return_gap_pointcircle.json]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
from scipy import stats

from metacpo_rllib.evaluation_stats import across_seeds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results"
#: The training defaults' variant in the ablation files (CPO ran the one without the
#: inner-step field in the older file; that field acts on the meta algorithms only).
DEFAULTS = "all_eps8_theta_outer_rec3_share_violating_inner_free"
FORMER = "all_eps8_theta_outer_rec3_share_violating"


class Source(NamedTuple):
    """Runs of one algorithm in one result file: an ablation file (variant and adaptation
    setting name the runs) or a comparison file (``variant`` None: its runs under ``algo``)."""
    path: str
    algo: str
    variant: Optional[str] = None
    setting: Optional[str] = None


#: θ trained with the defaults, each adapted with the defaults and with other settings.
MATCHED_FILE = "research/results/matched_adaptation_pointcircle.json"
#: Adaptation settings of ``MATCHED_FILE`` besides the defaults (``ad0.003``): training's
#: own inner step (8 episodes, radius 0.003, a quarter of it on a batch that saw no cost, c
#: from the batch alone), the same at radius 0.01, and the defaults with a cost-free step
#: of radius 0.0025 (0.003 × 0.8333) instead of 0.000375.
OTHER_SETTINGS = ("eps8+ad0.003+free0.25+rec1+win0", "eps8+ad0.01+free0.25+rec1+win0",
                  "ad0.003+free0.8333")

#: Every run of the defaults on PointCircle's `test` tasks on record (paths from the root).
SOURCES: dict[str, tuple[Source, ...]] = {
    "meta-cpo": (
        Source("research/results/adaptation_check_pointcircle.json", "meta-cpo", DEFAULTS,
               "ad0.003"),
        Source("docs/results/PointCircle/comparison.json", "MetaCPO"),
        Source("research/results/return_settings_seeds_pointcircle.json", "meta-cpo",
               DEFAULTS, "ad0.003+free0.125"),
        Source(MATCHED_FILE, "meta-cpo", DEFAULTS, "ad0.003")),
    "cpo": (
        Source("research/results/tasks4_cpo_pointcircle.json", "cpo", DEFAULTS, "ad0.003"),
        Source("docs/results/PointCircle/comparison.json", "CPO"),
        Source("research/results/return_settings_seeds_pointcircle.json", "cpo", FORMER,
               "ad0.003+free0.125"),
        Source(MATCHED_FILE, "cpo", DEFAULTS, "ad0.003")),
}


def returns_on_test(source: Source, root: Path = ROOT) -> list[list[float]]:
    """Per run of ``source``, its mean `test` evaluation return at steps 0, 1, …"""
    data = json.loads((root / source.path).read_text())
    if source.variant is None:  # a comparison file
        return [list(run["adapt"]["eval"]["mean_return"]) for run in data["runs"][source.algo]]
    return list(returns_by_seed(data, source).values())


def returns_by_seed(data: dict[str, Any], source: Source) -> dict[int, list[float]]:
    """Training seed → mean `test` evaluation return at steps 0, 1, … of the runs of an
    ablation file's ``data`` that ``source`` names."""
    return {run["seed"]: list(run["adaptation"]["test"]["eval_return"])
            for run in data["runs"].values()
            if (run["algo"], run["variant"], run["adapt_setting"])
            == (source.algo, source.variant, source.setting) and "test" in run["adaptation"]}


def setting_minus_defaults(data: dict[str, Any], setting: str, algo: str
                           ) -> list[dict[str, float]]:
    """Per adaptation step, over the θ in ``data`` (``MATCHED_FILE``'s) trained by
    ``algo``: the gain (return at step s minus step 0) adapted with ``setting`` minus the
    gain adapted with the defaults, paired on θ (mean, std and n over θ, as
    ``across_seeds``)."""
    ours = returns_by_seed(data, Source(MATCHED_FILE, algo, DEFAULTS, setting))
    base = returns_by_seed(data, Source(MATCHED_FILE, algo, DEFAULTS, "ad0.003"))
    seeds = sorted(set(ours) & set(base))
    return [across_seeds([(ours[k][s] - ours[k][0]) - (base[k][s] - base[k][0])
                          for k in seeds]) for s in range(len(base[seeds[0]]))]


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """mean(a) − mean(b) with its two-sided 95% Welch interval (``low``, ``high``)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else math.inf
    half = float(stats.t.ppf(0.975, df)) * se if se > 0 else 0.0
    return {"diff": diff, "low": diff - half, "high": diff + half, "df": float(df)}


def gap_table(meta: Sequence[Sequence[float]], cpo: Sequence[Sequence[float]]
              ) -> list[dict[str, Any]]:
    """Per adaptation step: return and gain over the runs of each algorithm, and Meta-CPO −
    CPO with its Welch interval for both (at step 0 the gains, and their interval, are 0)."""
    table = []
    for step in range(min(len(r) for r in (*meta, *cpo))):
        row: dict[str, Any] = {"step": step}
        for figure, value in (("return", lambda r: r[step]),
                              ("gain", lambda r: r[step] - r[0])):
            m, c = [value(r) for r in meta], [value(r) for r in cpo]
            row[figure] = {"meta-cpo": across_seeds(m), "cpo": across_seeds(c),
                           "meta-cpo minus cpo": welch(m, c)}
        table.append(row)
    return table


def markdown(table: Sequence[dict[str, Any]]) -> str:
    lines = ["| step | Meta-CPO return | CPO return | Meta-CPO − CPO (95%) "
             "| Meta-CPO gain | CPO gain | gain difference (95%) |", "|---|---|---|---|---|---|---|"]
    for row in table:
        cells = [str(row["step"])]
        for figure in ("return", "gain"):
            r = row[figure]
            d = r["meta-cpo minus cpo"]
            cells += [f"{r['meta-cpo']['mean']:.2f} ± {r['meta-cpo']['std']:.2f}",
                      f"{r['cpo']['mean']:.2f} ± {r['cpo']['std']:.2f}",
                      f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    runs = {algo: [row for source in sources for row in returns_on_test(source)]
            for algo, sources in SOURCES.items()}
    table = gap_table(runs["meta-cpo"], runs["cpo"])
    result = {"sources": {algo: [s._asdict() for s in sources]
                          for algo, sources in SOURCES.items()},
              "runs": {algo: len(rows) for algo, rows in runs.items()}, "steps": table,
              "settings": {}}
    print(f"runs: Meta-CPO {len(runs['meta-cpo'])}, CPO {len(runs['cpo'])} "
          "(mean ± std over runs; the difference with its two-sided 95% Welch interval)")
    print(markdown(table))
    matched = json.loads((ROOT / MATCHED_FILE).read_text())
    for setting in OTHER_SETTINGS:
        rows = {algo: list(returns_by_seed(matched, Source(MATCHED_FILE, algo, DEFAULTS,
                                                           setting)).values())
                for algo in SOURCES}
        entry = {"runs": {algo: len(r) for algo, r in rows.items()},
                 "steps": gap_table(rows["meta-cpo"], rows["cpo"]),
                 "gain_minus_defaults": {algo: setting_minus_defaults(matched, setting, algo)
                                         for algo in SOURCES}}
        result["settings"][setting] = entry
        print(f"\n{MATCHED_FILE}, adapted with {setting}: runs Meta-CPO "
              f"{entry['runs']['meta-cpo']}, CPO {entry['runs']['cpo']}")
        print(markdown(entry["steps"]))
        for algo, steps in entry["gain_minus_defaults"].items():
            print(f"{algo}: gain minus the defaults' gain, same θ: " + ", ".join(
                f"{d['mean']:+.2f} ± {d['std']:.2f}" for d in steps[1:]))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
