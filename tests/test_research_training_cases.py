"""research/training_cases.py on a tiny PointNav run (real Ray, real rollouts): one record
per iteration with every task's batch costs and limit, the inner steps' cases and the outer
step's figures, on the family ``--env-config`` sets; a finished seed is not rerun."""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from research.training_cases import OUTER_DETAILS, field_value, recovery_summary, summary

REPO = Path(__file__).resolve().parents[1]


def test_set_takes_field_equals_number_only():
    assert field_value("inner_cost_free_scale=0.25") == ("inner_cost_free_scale", 0.25)
    for bad in ("inner_cost_free_scale", "=0.5", "inner_cost_free_scale=half"):
        with pytest.raises(argparse.ArgumentTypeError, match="FIELD=NUMBER"):
            field_value(bad)


def test_summary_splits_inner_steps_by_whether_their_batch_saw_cost():
    records = [{"outer_case": 0.0, "pre_cost": [0.0, 4.0], "post_cost": [6.0, 1.0]},
               {"outer_case": 4.0, "pre_cost": [0.0, 0.0], "post_cost": [0.0, 3.0]}]
    figures = summary(records)
    # records written before the outer step's figures were kept: NaN, not an error
    assert math.isnan(figures.pop("recovery_predicted_cost_change"))
    assert math.isnan(figures.pop("recovery_on_theta_cost"))
    assert figures == {
        "iterations": 2, "outer_recoveries": 1, "cost_free_inner_steps": 3,
        "query_cost_after_cost_free": pytest.approx(3.0),
        "share_of_those_with_cost": pytest.approx(2 / 3), "other_inner_steps": 1,
        "cost_change_after_others": pytest.approx(-3.0),
        "theta_cost_change_after_recovery": pytest.approx(-2.0),
        "theta_cost_last_10": pytest.approx(1.0)}


def test_recovery_summary_follows_theta_cost_after_each_recovery():
    def record(case: float, theta_cost: list[float], predicted: float, on_theta: float):
        return {"outer_case": case, "pre_cost": theta_cost, "post_cost": theta_cost,
                "outer_predicted_cost_change": predicted,
                "outer_constraint_on_theta": on_theta}

    records = [record(0.0, [30.0, 10.0], -40.0, 1.0),   # θ's cost 20, then 12: −8
               record(2.0, [12.0, 12.0], 1.0, 0.0),
               record(0.0, [12.0, 12.0], -20.0, 0.0),   # then 16: +4
               record(0.0, [16.0, 16.0], -10.0, 1.0)]   # last: no next iteration
    assert recovery_summary(records) == {
        "recovery_predicted_cost_change": pytest.approx(-70.0 / 3),
        "recovery_on_theta_cost": pytest.approx(2 / 3),
        "theta_cost_change_after_recovery": pytest.approx(-2.0),
        "theta_cost_last_10": pytest.approx(15.0)}


@pytest.mark.ray
@pytest.mark.slow
def test_training_cases_records_every_iteration(tmp_path) -> None:
    out = tmp_path / "cases.json"
    command = [sys.executable, str(REPO / "research" / "training_cases.py"),
               "--family", "PointNav", "--seeds", "0", "--iterations", "2",
               "--episodes-per-task", "2", "--tasks-per-iteration", "3",
               "--set", "inner_cost_free_scale=0.5",
               "--env-config", '{"train_cost_limit": 3.0}', "--out", str(out)]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, timeout=600)
    data = json.loads(out.read_text())
    assert data["settings"]["set"] == [["inner_cost_free_scale", 0.5]]
    records = data["runs"]["seed0"]
    assert len(records) == 2
    for record in records:
        assert sum(record["inner_cases"].values()) == 3  # one inner step per task
        assert record["cost_limit"] == [3.0, 3.0, 3.0]  # the family of --env-config
        assert set(OUTER_DETAILS) <= set(record)
        assert record["line_search_accepted"] in (0.0, 1.0)
        for key in ("pre_cost", "post_cost", "pre_return", "post_return"):
            assert len(record[key]) == 3
        assert all(cost >= 0.0 for cost in record["pre_cost"] + record["post_cost"])
    before = out.read_text()
    done = subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert "done" not in done.stdout and out.read_text() == before
