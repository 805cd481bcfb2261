"""Helpers shared by test modules: process bookkeeping (from /proc) and random-policy episodes."""
from __future__ import annotations

import os
import signal
import subprocess

import numpy as np

from metacpo_rllib.optim import EpisodeData


def descendants(pid: int) -> set[int]:
    """PIDs of all live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group ``proc`` leads (SIGKILL after 30 s) and reap ``proc``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def random_episodes(family, task, n: int, seed: int) -> list[EpisodeData]:
    """n episodes of ``task`` under a fixed N(0, 1) random policy (2-D actions)."""
    rng = np.random.default_rng(seed)
    env = family.make_env(task)
    out = []
    for _ in range(n):
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        rows, done = [], False
        while not done:
            action = rng.standard_normal(2).astype(np.float32)
            nxt, reward, term, trunc, info = env.step(action)
            rows.append((obs, action, reward, info["cost"]))
            obs, done = nxt, term or trunc
        o, a, r, c = map(np.array, zip(*rows))
        logp = (-0.5 * a ** 2 - 0.5 * np.log(2 * np.pi)).sum(-1).astype(np.float32)
        out.append(EpisodeData(o.astype(np.float32), a.astype(np.float32), logp, r, c))
    return out
