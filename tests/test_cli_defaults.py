"""The CLI's sampling defaults are the config's (written out in cli_support so that argument
checks run without importing Ray)."""
from metacpo_rllib.cli_support import SAMPLING_DEFAULTS
from metacpo_rllib.rllib.config import MetaCPOConfig


def test_cli_sampling_defaults_are_the_configs():
    config = MetaCPOConfig()
    assert SAMPLING_DEFAULTS == {name: getattr(config, name) for name in SAMPLING_DEFAULTS}
