"""docs/RESULTS.md is generated from the committed run JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path

from metacpo_rllib.experiments import results_page

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_results_page_matches_the_committed_json(tmp_path) -> None:
    """Every number on docs/RESULTS.md comes from docs/results/**.json (figures not redrawn)."""
    families = results_page.load(RESULTS)
    assert "PointCircle" in families
    page = results_page.render(families, ROOT / "docs", draw=False, results=RESULTS)
    assert (ROOT / "docs" / "RESULTS.md").read_text() == page, \
        "docs/RESULTS.md is stale: run `make results-page`"
    for name, data in families.items():
        for algorithm in results_page.ALGORITHMS:
            assert data["runs"][algorithm], f"{name}: no {algorithm} runs"
        for fig in ("training.png", "adaptation.png"):
            assert (RESULTS / name / fig).read_bytes().startswith(b"\x89PNG")


def test_target_check_follows_its_definition() -> None:
    """The target verdicts on the page agree with the per-seed numbers in the JSON."""
    data = results_page.load(RESULTS)["PointCircle"]
    t = results_page.check_targets(data)
    within = [1 - s["adapt"]["violation_rate"][t["step"]] for s in data["runs"]["MetaCPO"]]
    assert math.isclose(t["within"], sum(within) / len(within))
    assert t["within_met"] == any(
        results_page.mean_std(results_page.per_seed(data["runs"]["MetaCPO"], "within", s))[0]
        >= results_page.TARGET_WITHIN for s in range(1, results_page.TARGET_MAX_STEP + 1))

