"""Meta-CPO's `test` return against CPO's over every run of the defaults on record.

Each PointCircle run on record that trained with the training defaults (4 tasks × 8 episodes
per iteration, 30 iterations) and adapted with the adaptation defaults on the same 6 `test`
tasks (task seed 12345) and 20 evaluation episodes per task and step (common random
numbers) gives one row of mean evaluation returns at adaptation steps 0–5. The runs differ in
seed and machine, so each is one draw of the trained θ. Per step this prints and writes,
for each algorithm, the mean and the std over runs, and the difference Meta-CPO − CPO with
its two-sided 95% Welch interval, once for the return and once for the *gain* (return at
step s minus step 0 of the same run: the adaptation itself, paired within each run).

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


#: Every run of the defaults on PointCircle's `test` tasks on record (paths from the root).
SOURCES: dict[str, tuple[Source, ...]] = {
    "meta-cpo": (
        Source("research/results/adaptation_check_pointcircle.json", "meta-cpo", DEFAULTS,
               "ad0.003"),
        Source("docs/results/PointCircle/comparison.json", "MetaCPO"),
        Source("research/results/return_settings_seeds_pointcircle.json", "meta-cpo",
               DEFAULTS, "ad0.003+free0.125")),
    "cpo": (
        Source("research/results/tasks4_cpo_pointcircle.json", "cpo", DEFAULTS, "ad0.003"),
        Source("docs/results/PointCircle/comparison.json", "CPO"),
        Source("research/results/return_settings_seeds_pointcircle.json", "cpo", FORMER,
               "ad0.003+free0.125")),
}


def returns_on_test(source: Source, root: Path = ROOT) -> list[list[float]]:
    """Per run of ``source``, its mean `test` evaluation return at steps 0, 1, …"""
    data = json.loads((root / source.path).read_text())
    if source.variant is None:  # a comparison file
        return [list(run["adapt"]["eval"]["mean_return"]) for run in data["runs"][source.algo]]
    return [list(run["adaptation"]["test"]["eval_return"]) for run in data["runs"].values()
            if (run["algo"], run["variant"], run["adapt_setting"])
            == (source.algo, source.variant, source.setting) and "test" in run["adaptation"]]


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
              "runs": {algo: len(rows) for algo, rows in runs.items()}, "steps": table}
    print(f"runs: Meta-CPO {len(runs['meta-cpo'])}, CPO {len(runs['cpo'])} "
          "(mean ± std over runs; the difference with its two-sided 95% Welch interval)")
    print(markdown(table))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
