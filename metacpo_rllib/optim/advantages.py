"""Advantages: GAE over episodes with a linear feature baseline fitted per batch (as in MAML-RL)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def discounted_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    """y[t] = sum_{k>=t} gamma^(k-t) x[k] (float64)."""
    out = np.empty(len(x), dtype=np.float64)
    running = 0.0
    for t in range(len(x) - 1, -1, -1):
        running = x[t] + gamma * running
        out[t] = running
    return out


def baseline_features(obs: np.ndarray, max_len: float = 1000.0) -> np.ndarray:
    """[obs, obs², t, t², t³, 1] with t = step index / max_len (MAML-RL's linear baseline)."""
    obs = np.clip(np.asarray(obs, dtype=np.float64), -10.0, 10.0)
    t = (np.arange(len(obs), dtype=np.float64) / max_len)[:, None]
    return np.concatenate([obs, obs**2, t, t**2, t**3, np.ones_like(t)], axis=1)


class LinearFeatureBaseline:
    """Ridge regression of returns-to-go on ``baseline_features``; fitted per batch."""

    def __init__(self, reg: float = 1e-5) -> None:
        self.reg = reg
        self.coef: np.ndarray | None = None

    def fit(self, features: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> None:
        x = np.concatenate(features)
        y = np.concatenate(targets)
        gram = x.T @ x
        rhs = x.T @ y
        reg = self.reg
        for _ in range(6):  # raise the ridge until the solve is well conditioned
            coef = np.linalg.lstsq(gram + reg * np.eye(gram.shape[0]), rhs, rcond=None)[0]
            if np.all(np.isfinite(coef)):
                break
            reg *= 10.0
        self.coef = coef

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.coef is None:
            return np.zeros(len(features))
        return features @ self.coef


def gae(values: np.ndarray, signal: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """GAE advantages of one complete episode; ``values`` has len(signal) entries, V(end) = 0."""
    next_values = np.append(values[1:], 0.0)
    deltas = signal + gamma * next_values - values
    return discounted_cumsum(deltas, gamma * lam)


def episode_advantages(
    obs: Sequence[np.ndarray],
    signals: Sequence[np.ndarray],
    gamma: float,
    lam: float,
    values: Optional[Sequence[np.ndarray]] = None,
) -> list[np.ndarray]:
    """GAE advantages of ``signals`` (rewards or costs) for a list of complete episodes.

    A linear feature baseline is fitted to the discounted signal-to-go of these episodes,
    then used for GAE; ``values`` (per episode, one value per step, in the signal's units,
    e.g. a learned critic's) replaces the baseline when given. Episode ends are treated as
    terminal: the constraint and the return are defined per episode, so nothing is
    bootstrapped past an episode's last step.
    """
    if values is not None:
        if len(values) != len(signals):
            raise ValueError(f"values: expected {len(signals)} episodes, got {len(values)}")
        out = []
        for i, (v, s) in enumerate(zip(values, signals)):
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            if len(v) != len(s):
                raise ValueError(f"values: episode {i} has {len(s)} steps, got {len(v)} values")
            out.append(gae(v, s, gamma, lam))
        return out
    feats = [baseline_features(o) for o in obs]
    baseline = LinearFeatureBaseline()
    baseline.fit(feats, [discounted_cumsum(s, gamma) for s in signals])
    return [gae(baseline.predict(f), s, gamma, lam) for f, s in zip(feats, signals)]
