"""The spec's ``evaluation`` section reaches the config, and the comparison reads the training
evaluation (θ on the fixed training tasks) from a trial's results."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from metacpo_rllib.experiments import compare
from metacpo_rllib.experiments.spec import SpecError, build_config, parse_spec

CONFIGS = Path(__file__).resolve().parents[1] / "tune_configs"
SPEC = {"algorithm": ["MetaCPO", "CPO"], "family": "PointNav", "iterations": 4,
        "env_config": {"horizon": 30}}


def test_evaluation_section_sets_the_config() -> None:
    spec = parse_spec({**SPEC, "evaluation": {"evaluation_interval": 2,
                                              "evaluation_duration": 3,
                                              "evaluation_num_tasks": 5}})
    for algorithm in spec.algorithms:
        config = build_config(spec, algorithm)
        assert (config.evaluation_interval, config.evaluation_duration,
                config.evaluation_num_tasks) == (2, 3, 5)
    assert build_config(parse_spec(SPEC), "CPO").evaluation_interval is None  # off by default


@pytest.mark.parametrize("evaluation, message", [
    ({"evaluation_intervall": 2}, "evaluation.evaluation_intervall: unknown key; did you mean "
                                  "'evaluation_interval'?"),
    ({"evaluation_interval": 0}, "evaluation.evaluation_interval: expected an integer >= 1"),
    ({"evaluation_duration": 2.5}, "evaluation.evaluation_duration: expected an integer >= 1"),
    ({"evaluation_seed": -1}, "evaluation.evaluation_seed: expected an integer >= 0"),
])
def test_bad_evaluation_fields_name_the_field(evaluation, message) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**SPEC, "evaluation": evaluation})
    assert str(err.value).startswith(message)


def _results(evaluated: dict[int, float]) -> pd.DataFrame:
    """A trial's per-iteration results: evaluation columns only where θ was evaluated."""
    rows = []
    for it in range(1, 5):
        row = {"training_iteration": it}
        if it in evaluated:
            row.update({"evaluation/mean_cost": evaluated[it], "evaluation/cost_limit": 10.0,
                        "evaluation/meets_limit": float(evaluated[it] <= 10.0)})
        rows.append(row)
    return pd.DataFrame(rows)


def test_training_evaluation_is_the_last_evaluated_iteration() -> None:
    got = compare.training_evaluation(_results({2: 12.0, 4: 7.5}))
    assert got == {"iteration": 4, "mean_cost": 7.5, "cost_limit": 10.0, "meets_limit": 1.0}
    assert compare.training_evaluation(pd.DataFrame({"training_iteration": [1, 2]})) is None


def test_training_table_reports_every_algorithm_that_evaluated() -> None:
    keys = ("mean_return", "mean_cost", "cost_ucb", "meets_limit", "certified")
    runs = {"CPO": [{"seed": s, "adapt": None, "train_eval": {
        "iteration": 4, "cost_limit": 10.0, **{k: float(s + i) for i, k in enumerate(keys)}}}
        for s in (0, 2)], "TRPO": [{"seed": 0, "adapt": None, "train_eval": None}]}
    summary = compare.summarize(runs)
    assert "train_eval" not in summary["TRPO"]
    assert summary["CPO"]["train_eval"]["mean_cost"]["mean"] == 2.0
    assert math.isclose(summary["CPO"]["train_eval"]["mean_cost"]["std"], 2 ** 0.5)
    lines = compare._training_evaluation_lines(runs, summary)
    assert "iteration 4" in lines[0] and "h = 10.00" in lines[0]
    (row,) = [line for line in lines if line.startswith("| CPO |")]
    assert row.endswith("| 2 |") and row.count("±") == 5


def test_compare_flags_choose_the_split_and_the_training_evaluation() -> None:
    import argparse

    from metacpo_rllib.experiments.commands import compare_spec_from_args, configure_compare

    parser = argparse.ArgumentParser()
    configure_compare(parser)
    spec = compare_spec_from_args(parser.parse_args(
        ["--family", "PointNav", "--split", "test_tight", "--eval-interval", "2"]))
    assert spec.adaptation.split == "test_tight" and spec.evaluation == {"evaluation_interval": 2}
    spec = compare_spec_from_args(parser.parse_args(
        ["--config", str(CONFIGS / "pointcircle_compare.yaml"), "--split", "test_tight"]))
    assert spec.adaptation.split == "test_tight" and spec.evaluation["evaluation_interval"] == 30
    assert compare_spec_from_args(parser.parse_args(["--family", "PointNav"])).evaluation == {}
