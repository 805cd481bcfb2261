"""A Tune callback that shows a sweep's progress as one tqdm bar with ETA (``console.progress``:
on a terminal only), counting trial iterations."""
from __future__ import annotations

from typing import Any, Optional

from ray.tune import Callback

from metacpo_rllib import console


class TrialIterationProgress(Callback):
    """One bar over all trial iterations of a Tuner: ``total`` = trials × ``iterations``
    (the trial count comes from Tune at setup), advanced by each trial result. ``done``
    counts the results seen (also when the bar is off)."""

    def __init__(self, iterations: int, desc: str = "trials") -> None:
        self.iterations = int(iterations)
        self.desc = desc
        self.total: Optional[int] = None
        self.done = 0
        self._bar: Any = None

    def setup(self, stop: Any = None, num_samples: Optional[int] = None,
              total_num_samples: Optional[int] = None, **info: Any) -> None:
        trials = total_num_samples or num_samples
        self.total = None if trials is None else int(trials) * self.iterations
        self._bar = console.progress(self.total, self.desc, "iter")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks with the experiment
        return {**self.__dict__, "_bar": None}
