"""research/surrogate_check.py on a real env: the recovery step's predicted and realised cost
changes, sampled with the training sampler (``metacpo_rllib.rollout``)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "research" / "surrogate_check.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("surrogate_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_surrogate_check_on_a_real_env(tmp_path) -> None:
    """Predicted and realised changes are finite, the recovery step predicts no increase,
    the report is written, and the same seed gives the same report."""
    out = tmp_path / "investigation" / "surrogate.json"
    argv = ["--family", "PointNav", "--tasks", "1", "--eval-episodes", "6",
            "--batch-episodes", "4"]
    script = _script()
    report = script.main(argv + ["--out", str(out)])
    (task,) = report["tasks"]
    (step,) = task["steps"]
    assert step["batch_episodes"] == 4 and step["case"] == 0  # the recovery case
    cosine = step["gradient_cosine_disjoint_batch"]
    assert cosine is None or -1 <= cosine <= 1
    assert step["predicted_change"] <= 0  # a cost-descent step predicts no increase
    assert all(math.isfinite(step[k]) for k in ("realised_change", "realised_change_se"))
    assert json.loads(out.read_text())["tasks"][0]["steps"][0] == step
    assert script.main(argv)["tasks"] == report["tasks"]  # seeded: reproducible
