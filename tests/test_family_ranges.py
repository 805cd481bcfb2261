"""``ranges``: a family override that replaces entries of a safety family's task ranges
(e.g. PointCircle training walls as close as ``test_tight``'s), checked before any training."""
from __future__ import annotations

import pytest

from metacpo_rllib.envs import make_family
from metacpo_rllib.rllib import MetaCPOConfig
from metacpo_rllib.rllib.registry import make_family_env

CLOSER_WALLS = {"train": {"factor": [0.28, 0.75]}}


def test_override_replaces_one_split_entry_only() -> None:
    family = make_family("PointCircle", ranges=CLOSER_WALLS)
    default = make_family("PointCircle")
    assert family.RANGES["train"] == {"radius": (1.0, 1.5), "factor": (0.28, 0.75)}
    assert default.RANGES["train"]["factor"] == (0.55, 0.75)  # the class is untouched
    assert family.RANGES["test"] == default.RANGES["test"]
    factors = [t.params["factor"] for t in family.sample_tasks(200, "train", seed=3)]
    assert min(factors) < 0.36 and max(factors) > 0.7  # the tight and the usual walls
    assert all(0.28 <= f <= 0.75 for f in factors)
    tests = family.sample_tasks(5, "test_tight", seed=1)
    assert tests == default.sample_tasks(5, "test_tight", seed=1)


def test_runner_env_and_config_carry_the_override() -> None:
    env = make_family_env("PointCircle", {"ranges": CLOSER_WALLS})
    try:
        assert env.family.RANGES["train"]["factor"] == (0.28, 0.75)
    finally:
        env.close()
    config = MetaCPOConfig().environment("PointCircle", env_config={"ranges": CLOSER_WALLS})
    assert config.make_family().RANGES["train"]["factor"] == (0.28, 0.75)


@pytest.mark.parametrize("ranges, field", [
    ({"train": {"factor": [0.75, 0.55]}}, "ranges.train.factor"),
    ({"train": {"factor": 0.5}}, "ranges.train.factor"),
    ({"train": {"size": [1, 2]}}, "ranges.train.size"),
    ({"trian": {"factor": [0.5, 0.6]}}, "ranges.trian"),
    ({"train": {"factor": [0.1, 0.2]}}, "ranges.train: gives invalid tasks"),
])
def test_bad_ranges_name_the_field_before_training(ranges, field) -> None:
    with pytest.raises(ValueError, match=field):
        make_family("PointCircle", ranges=ranges)
    config = MetaCPOConfig().environment("PointCircle", env_config={"ranges": ranges})
    with pytest.raises(ValueError, match=field):
        config.validate_metacpo()


def test_counts_keep_their_kind() -> None:
    family = make_family("PointButton", ranges={"train": {"extra_hazards": 6}})
    assert family.RANGES["train"]["extra_hazards"] == 6
    with pytest.raises(ValueError, match="ranges.train.extra_hazards"):
        make_family("PointButton", ranges={"train": {"extra_hazards": 6.5}})


def test_car_circle_hazard_takes_denser_training_layouts() -> None:
    """Its validation reads ``hazard_keepout``, so the override is checked only once that
    is set; training then draws up to the test split's hazard counts."""
    family = make_family("CarCircleHazard", ranges={"train": {"num_hazards": [4, 11]}})
    counts = {t.params["num_hazards"] for t in family.sample_tasks(100, "train", seed=0)}
    assert counts == set(range(4, 12))
    with pytest.raises(ValueError, match="ranges.train: gives invalid tasks"):
        make_family("CarCircleHazard", ranges={"train": {"hazard_extent": 0.1}})
    with pytest.raises(ValueError, match="hazard_keepout"):
        make_family("CarCircleHazard", hazard_keepout=2.0)
