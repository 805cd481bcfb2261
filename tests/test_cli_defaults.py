"""The CLI's sampling defaults are the config's (written out in cli_support so that argument
checks run without importing Ray); the measured recipes train at the config's inner radius."""
import re
from pathlib import Path

import yaml

from metacpo_rllib.cli_support import SAMPLING_DEFAULTS
from metacpo_rllib.rllib.config import MetaCPOConfig

ROOT = Path(__file__).resolve().parents[1]


def test_cli_sampling_defaults_are_the_configs():
    config = MetaCPOConfig()
    assert SAMPLING_DEFAULTS == {name: getattr(config, name) for name in SAMPLING_DEFAULTS}


def test_measured_recipes_train_at_the_configs_inner_radius():
    """`make train` and every comparison config use MetaCPOConfig's inner_delta, so a user
    who keeps the default trains the θ the results measure."""
    radius = MetaCPOConfig().inner_delta
    train = re.search(r"^train:.*?--inner-delta ([0-9.]+)", (ROOT / "Makefile").read_text(),
                      re.S | re.M)
    assert train and float(train.group(1)) == radius
    configs = sorted((ROOT / "tune_configs").glob("*_compare*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        spec = yaml.safe_load(path.read_text())
        assert spec["training"].get("inner_delta", radius) == radius, path.name
