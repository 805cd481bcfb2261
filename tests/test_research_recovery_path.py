"""research/recovery_path.py on a real env: recovery steps of several radii and re-linearised
sub-steps from one batch, each scored on fresh episodes."""
from __future__ import annotations

import json
import math

from research import recovery_path


def test_recovery_path_on_a_real_env(tmp_path) -> None:
    """Every step predicts a cost drop, a longer radius moves further (KL), sub-steps add
    up their predictions on the surrogate's scale, the summary's shares are shares, the
    report is written, and the same seed gives the same report."""
    out = tmp_path / "recovery.json"
    argv = ["--family", "PointCircle", "--split", "test_tight", "--tasks", "1", "--scales", "1", "4",
            "--substeps", "2", "--substep-scale", "1", "--batch-episodes", "8",
            "--eval-episodes", "3"]
    report = recovery_path.main(argv + ["--out", str(out)])
    (row,) = report["rows"]
    assert row["batch_cost"] > 0  # a batch that saw cost: b ≠ 0, a real step
    steps = row["single"] + row["substeps"]
    assert all(s["predicted_change"] <= 0 for s in steps)
    assert all(math.isfinite(s[k]) for s in steps
               for k in ("surrogate_change", "kl", "cost", "cost_other_seeds"))
    one, four = row["single"]
    assert 0 < one["kl"] < four["kl"]
    first, second = row["substeps"]
    assert first["cost"] == one["cost"]  # the first sub-step is the scale-1 step
    assert second["kl"] > first["kl"]
    summary = report["summary"]
    assert summary["tasks"] == 1 and 0 <= summary["chosen_within"] <= 1
    assert all(0 <= s["within"] <= 1 for s in summary["scales"] + summary["substeps"])
    assert sum(b["pairs"] for b in summary["by_start"]) == 1  # the bands cover every cost
    assert json.loads(out.read_text())["rows"] == report["rows"]
    assert recovery_path.main(argv)["rows"] == report["rows"]  # seeded: reproducible
