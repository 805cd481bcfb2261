"""A training curriculum (``curriculum_iterations`` / ``curriculum_ranges``): the first M
meta-iterations draw their training tasks from other ranges; the run is the one trained M
iterations on those ranges and continued from its checkpoint on env_config's."""
from __future__ import annotations

import numpy as np
import pytest

from metacpo_rllib import cli
from metacpo_rllib.rllib import MetaCPOConfig
from helpers import theta

#: The curriculum's circles (small) and env_config's (large): apart, so that both the tasks
#: and the rewards (short episodes see no wall) tell them apart.
SMALL = {"train": {"radius": [1.0, 1.05]}}
LARGE = {"train": {"radius": [1.45, 1.5]}}


def make_config(ranges: dict, **training) -> MetaCPOConfig:
    return (MetaCPOConfig()
            .environment("PointCircle", env_config={"max_episode_steps": 40, "ranges": ranges})
            .env_runners(num_env_runners=0)
            .training(tasks_per_iteration=2, episodes_per_task=2, seed=5, **training))


def train(config: MetaCPOConfig, iterations: int, restore: str | None = None,
          save: str | None = None) -> tuple[dict[str, np.ndarray], list[list[float]]]:
    """θ after ``iterations`` more meta-iterations, and each iteration's task radii."""
    algo = config.build_algo()
    radii = []
    try:
        if restore is not None:
            algo.restore_from_path(restore)
        draw = algo.sample_train_tasks

        def recorded():
            tasks = draw()
            radii.append([t.params["radius"] for t in tasks])
            return tasks

        algo.sample_train_tasks = recorded
        for _ in range(iterations):
            algo.train()
        if save is not None:
            algo.save_to_path(save)
        return theta(algo), radii
    finally:
        algo.stop()


@pytest.mark.ray
def test_curriculum_is_the_run_continued_on_other_ranges(ray_local, tmp_path) -> None:
    curriculum, radii = train(
        make_config(LARGE, curriculum_iterations=1, curriculum_ranges=SMALL), 2)
    assert all(1.0 <= r <= 1.05 for r in radii[0]), radii
    assert all(1.45 <= r <= 1.5 for r in radii[1]), radii

    path = str(tmp_path / "stage1")
    train(make_config(SMALL), 1, save=path)
    staged, staged_radii = train(make_config(LARGE), 1, restore=path)
    assert staged_radii == radii[1:]
    for key, value in curriculum.items():
        np.testing.assert_array_equal(value, staged[key], err_msg=key)

    plain, _ = train(make_config(LARGE), 2)
    assert any(not np.array_equal(value, plain[key]) for key, value in curriculum.items())


@pytest.mark.parametrize("env, training, field", [
    ("PointCircle", {"curriculum_iterations": 2}, "curriculum_iterations: needs"),
    ("PointCircle", {"curriculum_ranges": SMALL}, "curriculum_ranges: needs"),
    ("PointCircle", {"curriculum_iterations": -1, "curriculum_ranges": SMALL},
     "curriculum_iterations: expected an integer >= 0"),
    ("PointCircle", {"curriculum_iterations": 3,
                     "curriculum_ranges": {"train": {"factor": [0.75, 0.55]}}},
     "curriculum_ranges: ranges.train.factor"),
    ("PointNav", {"curriculum_iterations": 3, "curriculum_ranges": {}},
     "curriculum_ranges: family PointNav: invalid override"),
])
def test_bad_curriculum_names_the_field_before_training(env, training, field) -> None:
    config = MetaCPOConfig().environment(env).training(**training)
    with pytest.raises(ValueError, match=field):
        config.validate_metacpo()


def test_train_flags_set_the_curriculum() -> None:
    args = cli.build_parser().parse_args(
        ["train", "--family", "CarCircleHazard", "--env-config",
         '{"ranges": {"train": {"num_hazards": [4, 11]}}}', "--curriculum-iterations", "50",
         "--curriculum-ranges", "{}"])
    config = cli.build_config(args)
    config.validate_metacpo()
    assert (config.curriculum_iterations, config.curriculum_ranges) == (50, {})
    assert config.make_family(curriculum=True).RANGES["train"]["num_hazards"] == (4, 6)
    assert config.make_family().RANGES["train"]["num_hazards"] == (4, 11)
