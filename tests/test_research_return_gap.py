"""research/return_gap.py: the Welch interval, the per-step table and the runs on record."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from research import return_gap


def test_welch_matches_scipy() -> None:
    """The difference and its interval are scipy's unequal-variance t-test's."""
    a, b = [5.1, 2.0, 9.3, 7.7, 4.4], [6.0, 6.5, 5.2, 7.9]
    got = return_gap.welch(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert got["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (got["low"], got["high"]) == pytest.approx((ci.low, ci.high))


def test_gain_is_paired_within_a_run() -> None:
    """Runs that differ in θ's return by a constant but gain alike: the return gap is that
    constant, the gain gap 0; a spread of θ's return widens the return interval only."""
    rng = np.random.default_rng(0)
    cpo = [[base + 0.3 * s + rng.normal(0, 0.01) for s in range(6)]
           for base in rng.normal(5, 2, size=8)]
    meta = [[x + 1.0 for x in run] for run in cpo]
    table = return_gap.gap_table(meta, cpo)
    assert [row["step"] for row in table] == list(range(6))
    for row in table:
        ret, gain = row["return"]["meta-cpo minus cpo"], row["gain"]["meta-cpo minus cpo"]
        assert ret["diff"] == pytest.approx(1.0)
        assert ret["low"] < 0 < 1 < ret["high"]  # θ's spread hides a gap of 1
        assert gain["diff"] == pytest.approx(0.0, abs=1e-9)
        assert gain["high"] - gain["low"] < 0.1  # the gain's interval stays narrow
    assert table[0]["gain"]["meta-cpo"]["mean"] == 0.0


def test_runs_on_record(tmp_path) -> None:
    """Every source names runs, each with steps 0–5, and the report is written."""
    for sources in return_gap.SOURCES.values():
        for source in sources:
            rows = return_gap.returns_on_test(source)
            assert rows and all(len(r) == 6 for r in rows), source
    out = tmp_path / "gap.json"
    result = return_gap.main(["--out", str(out)])
    assert result["runs"] == {"meta-cpo": 15, "cpo": 12}
    assert json.loads(out.read_text())["steps"][5]["step"] == 5
    for setting in return_gap.OTHER_SETTINGS:  # each θ of seeds 0-2, adapted with each
        entry = result["settings"][setting]
        assert entry["runs"] == {"meta-cpo": 3, "cpo": 3}
        for steps in entry["gain_minus_defaults"].values():
            assert len(steps) == 6 and steps[0]["mean"] == 0.0 and steps[5]["n"] == 3


def test_setting_minus_defaults_is_paired_on_theta() -> None:
    """The defaults adapted against the defaults gain exactly as much; another setting's
    difference is its own gain minus the defaults' gain of the same θ."""
    data = json.loads((return_gap.ROOT / return_gap.MATCHED_FILE).read_text())
    same = return_gap.setting_minus_defaults(data, "ad0.003", "cpo")
    assert all(step["mean"] == 0.0 and step["std"] == 0.0 for step in same)
    setting = return_gap.OTHER_SETTINGS[0]
    ours = return_gap.returns_by_seed(data, return_gap.Source(
        return_gap.MATCHED_FILE, "meta-cpo", return_gap.DEFAULTS, setting))
    base = return_gap.returns_by_seed(data, return_gap.Source(
        return_gap.MATCHED_FILE, "meta-cpo", return_gap.DEFAULTS, "ad0.003"))
    want = np.mean([(ours[k][5] - ours[k][0]) - (base[k][5] - base[k][0]) for k in base])
    assert return_gap.setting_minus_defaults(data, setting, "meta-cpo")[5]["mean"] == \
        pytest.approx(want)
