"""Smoke test of the benchmark scripts (tiny settings, PointNav) and of the report generator."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_fast_step  # noqa: E402
import bench_lean_rollout  # noqa: E402
import bench_meta_share  # noqa: E402
import bench_profile  # noqa: E402
import bench_sampling  # noqa: E402
import bench_scaling  # noqa: E402
import report  # noqa: E402

pytestmark = pytest.mark.ray
TINY = ["--family", "PointNav", "--tasks", "2", "--episodes", "1", "--env-config", "horizon=20"]


def _check_json(path: Path, key: str = "rows") -> dict:
    data = json.loads(path.read_text())
    assert data["commit"] and data["machine"]["cpus"] >= 1 and data[key]
    return data


def test_scripts_write_json_and_report_renders(tmp_path: Path) -> None:
    bench_sampling.main(["--families", "PointNav", "--runners", "1", "--jobs-per-runner", "1",
                         "--episodes", "1", "--repeats", "2",
                         "--horizon", "20", "--out", str(tmp_path / "sampling.json")])
    rows = _check_json(tmp_path / "sampling.json")["rows"]
    assert rows[0]["sampled_steps_per_s"] > 0 and rows[0]["ratio"] > 0
    pair = rows[0]["paired"]  # raw and sampled measured alternately, one ratio per repeat
    assert len(pair["raw_runs"]) == len(pair["runs"]) == len(pair["ratios"]) == 2
    assert pair["ratios"] == [s / r for s, r in zip(pair["runs"], pair["raw_runs"])]
    bench_lean_rollout.main(["--families", "PointNav", "--steps", "100", "--repeats", "1",
                             "--horizon", "20", "--out", str(tmp_path / "lean_rollout.json")])
    assert _check_json(tmp_path / "lean_rollout.json")["rows"][0]["lean_steps_per_s"] > 0
    bench_meta_share.main([*TINY, "--runners", "0", "--iterations", "1",
                           "--settings", "euclidean:closed_form",
                           "--out", str(tmp_path / "meta_share.json")])
    share = _check_json(tmp_path / "meta_share.json")["rows"][0]["learner_share"]
    assert 0 < share < 1
    bench_scaling.main([*TINY, "--runners", "0", "--iterations", "1", "--metric", "euclidean",
                        "--out", str(tmp_path / "scaling.json")])
    _check_json(tmp_path / "scaling.json")
    bench_profile.main([*TINY, "--metric", "euclidean", "--out", str(tmp_path / "profile.json")])
    parts = {p["part"]: p for p in _check_json(tmp_path / "profile.json", "parts")["parts"]}
    assert parts["runner rollout"]["cumulative_s"] > 0
    assert parts["learner meta_step"]["cumulative_s"] > 0

    text = report.main(["--results", str(tmp_path), "--out", str(tmp_path / "B.md")])
    assert (tmp_path / "B.md").read_text() == text
    for title in ("Sampling efficiency", "Rollout loops", "Meta-update share", "Scaling",
                  "Profile"):
        assert f"## {title}" in text
    assert "*No results: run `benchmarks/bench_update.py`.*" in text
    assert "sampling ratio ≥ 0.8" in text and "learner share ≤ 10.0%" in text


def test_fast_step_benchmark_writes_json_and_renders(tmp_path: Path) -> None:
    data = bench_fast_step.main(["--rounds", "1", "--steps", "60", "--skip-train", "--tasks",
                                 "2", "--out", str(tmp_path / "fast_step.json")])
    saved = json.loads((tmp_path / "fast_step.json").read_text())
    assert saved["commit"] and [r["family"] for r in saved["env"]] == list(
        bench_fast_step.FAMILIES)
    for row in data["env"]:
        us = row["us_per_step"]
        assert 0 < us["physics"] and 0 < us["fast"] and 0 < us["stock"]
        assert row["ratio_fast"] == pytest.approx(us["physics"] / us["fast"])
    assert saved["dco"]["batched_round_s"] > 0 and saved["dco"]["tasks"] == 2
    text = report.main(["--results", str(tmp_path), "--out", str(tmp_path / "B.md")])
    assert "## Fast step vs stock step" in text and "fast step ≥ 0.5 of bare physics" in text


def test_report_renders_committed_results() -> None:
    """The committed JSON renders, and every number of docs/BENCHMARKS.md comes from it."""
    data = report.load(BENCH / "results")
    assert data
    text = report.render(data)
    doc = BENCH.parent / "docs" / "BENCHMARKS.md"
    if doc.exists() and len(data) == len(report.SOURCES):
        assert doc.read_text() == text, "docs/BENCHMARKS.md is stale: run benchmarks/report.py"
