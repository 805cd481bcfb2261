"""docs/RESULTS.md is generated from the committed comparison JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from research import results_page

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_results_page_matches_the_committed_json() -> None:
    """Every number on docs/RESULTS.md comes from docs/results/*/comparison.json (figures
    not redrawn); both PointCircle splits are there, with every algorithm's runs."""
    comparisons = results_page.load(RESULTS)
    splits = {results_page.split_of(d) for d in comparisons.values()
              if d["family"] == "PointCircle"}
    assert splits == {"test", "test_tight"}
    page = results_page.render(comparisons, ROOT / "docs", draw=False, results=RESULTS,
                               ablation=results_page.DEFAULT_ABLATION,
                               training_ledger=results_page.DEFAULT_TRAINING_LEDGER,
                               batch_sweep=results_page.DEFAULT_BATCH_SWEEP,
                               input_ablation=results_page.DEFAULT_INPUT_ABLATION,
                               research={s.key: s.default
                                         for s in results_page.RESEARCH_SECTIONS},
                               other_families=results_page.DEFAULT_OTHER_FAMILIES)
    assert (ROOT / "docs" / "RESULTS.md").read_text() == page, \
        "docs/RESULTS.md is stale: run `make results-page`"
    for name, data in comparisons.items():
        for algorithm in results_page.ALGORITHMS:
            assert len(data["runs"][algorithm]) >= 3, f"{name}: fewer than 3 {algorithm} seeds"
        for fig in ("training.png", "adaptation.png"):
            assert (RESULTS / name / fig).read_bytes().startswith(b"\x89PNG")
    assert (RESULTS / "calibration.png").read_bytes().startswith(b"\x89PNG")


def test_readme_targets_table_is_the_pages() -> None:
    """The README's targets table is the one of docs/RESULTS.md, from the same JSON, between
    its two marker lines; a README without them is refused."""
    readme = (ROOT / "README.md").read_text()
    comparisons = results_page.load(RESULTS)
    assert results_page.with_targets_table(readme, comparisons) == readme, \
        "README.md's targets table is stale: run `make results-page`"
    table = readme.split(results_page.README_BEGIN)[1].split(results_page.README_END)[0]
    page = (ROOT / "docs" / "RESULTS.md").read_text()
    rows = [line for line in table.splitlines() if line]
    assert len(rows) > 2 and all(row in page for row in rows)
    with pytest.raises(ValueError, match="targets table"):
        results_page.with_targets_table("# no markers\n", comparisons)


def test_target_check_follows_its_definition() -> None:
    """The target verdicts agree with the per-seed evaluation numbers in the JSON."""
    for data in results_page.load(RESULTS).values():
        t = results_page.check_targets(data)
        runs = data["runs"]["MetaCPO"]
        within = [s["adapt"]["eval"]["within_limit_rate"][t["step"]] for s in runs]
        assert math.isclose(t["within"], sum(within) / len(within))
        assert t["within_met"] == any(
            results_page.mean_std(results_page.per_seed(runs, "within", s))[0]
            >= results_page.TARGET_WITHIN for s in range(1, results_page.TARGET_MAX_STEP + 1))
        meets = [s["train_eval"]["mean_cost"] <= s["train_eval"]["cost_limit"]
                 for a in results_page.CONSTRAINED for s in data["runs"][a]]
        assert t["train_met"] == all(meets)
        for a in results_page.CONSTRAINED:  # the training target: the mean over seeds
            costs = [s["train_eval"]["mean_cost"] for s in data["runs"][a]]
            limit = data["runs"][a][0]["train_eval"]["cost_limit"]
            assert t["train_mean"][a] == pytest.approx(sum(costs) / len(costs))
            assert t["train_bound"] == pytest.approx(1.1 * limit)
        assert t["train_mean_met"] == all(
            v <= t["train_bound"] for v in t["train_mean"].values())
        # every adaptation step: the per-seed fractions within h, and the returns vs CPO's
        steps = range(1, int(data["adaptation"]["adapt_steps"]) + 1)
        every = [sum(s["adapt"]["eval"]["within_limit_rate"][k] for s in runs) / len(runs)
                 for k in steps]
        assert t["every_within"] == pytest.approx(every)
        assert t["every_met"] == all(v >= results_page.TARGET_EVERY_STEP for v in every)
        returns, cpo = t["return_vs_cpo"]
        assert t["cpo_above_steps"] == [k for k in steps if returns[k] <= cpo[k]]


def test_batch_scored_runs_are_refused(tmp_path) -> None:
    """A comparison without evaluation episodes is not rendered as a safety result."""
    old = RESULTS / "batch-scored" / "PointCircle" / "comparison.json"
    (tmp_path / "PointCircle").mkdir()
    (tmp_path / "PointCircle" / "comparison.json").write_text(old.read_text())
    with pytest.raises(ValueError, match="PointCircle: no evaluation episodes"):
        results_page.load(tmp_path)


def test_training_seeds_section_counts_the_last_evaluations() -> None:
    """The per-seed training table marks every cost above h, and its summary counts the
    seeds whose last evaluation is within h, from the JSON."""
    import json

    section = next(s for s in results_page.RESEARCH_SECTIONS if s.key == "training_seeds")
    lines = section.show(section.default, section.title, section.what)
    runs = json.loads(section.default.read_text())["runs"].values()
    for algo in ("meta-cpo", "cpo"):
        last = [[r for r in run["training"] if "eval_cost" in r][-1] for run in runs
                if run["algo"] == algo]
        within = sum(r["eval_cost"] <= r["cost_limit"] for r in last)
        assert f"- {algo}: the last evaluation is within h on {within} of {len(last)} " \
               "seeds" in "\n".join(lines)
    rows = [line for line in lines if line.startswith(("| meta-cpo |", "| cpo |"))]
    assert len(rows) == len(runs)
    assert sum(cell.strip().endswith("*") for row in rows for cell in row.split("|")) == sum(
        r["eval_cost"] > r["cost_limit"] for run in runs for r in run["training"]
        if "eval_cost" in r)


def test_training_controls_summary_compares_each_variant_on_its_seeds() -> None:
    """The controls' summary counts each variant's seeds within h and sets it beside the
    default (`all`) on the same seeds, from the JSON."""
    import json

    import numpy as np

    section = next(s for s in results_page.RESEARCH_SECTIONS if s.key == "training_controls")
    text = "\n".join(section.show(section.default, section.title, section.what))
    runs = list(json.loads(section.default.read_text())["runs"].values())
    last = {(r["variant"], r["algo"], r["seed"]): [x for x in r["training"]
                                                   if "eval_cost" in x][-1] for r in runs}
    checked = 0
    for variant, algo in {(r["variant"], r["algo"]) for r in runs} - {("all", "cpo"),
                                                                       ("all", "meta-cpo")}:
        seeds = sorted(s for v, a, s in last if (v, a) == (variant, algo))
        if not all(("all", algo, s) in last for s in seeds):
            continue
        costs = [last[(variant, algo, s)]["eval_cost"] for s in seeds]
        within = sum(c <= last[(variant, algo, s)]["cost_limit"]
                     for c, s in zip(costs, seeds))
        base = np.mean([last[("all", algo, s)]["eval_cost"] for s in seeds])
        row = next(line for line in text.splitlines()
                   if line.startswith(f"| {variant} | {algo} | "))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[3] == str(within)
        assert cells[5] == f"{np.mean(costs):.1f}" and cells[6] == f"{base:.1f}"
        checked += 1
    assert checked >= 3


def test_other_family_sections_show_every_variant_and_adaptation_setting() -> None:
    """Each family's section has one adaptation row per (variant, adaptation setting) of its
    JSON, and says that other rows change one setting exactly when there are such rows."""
    from research import ablation_report

    for path in results_page.DEFAULT_OTHER_FAMILIES:
        data = json.loads(path.read_text())
        section = "\n".join(results_page.other_family_section(path))
        labels = {ablation_report.run_label(run) for run in data["runs"].values()}
        for label in labels:
            assert f"| {label} | meta-cpo |" in section, f"{path.name}: no row {label}"
        assert ("the other rows change one" in section) == (len(labels) > 2), path.name
