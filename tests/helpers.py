"""Helpers shared by test modules: process bookkeeping (from /proc), a real MLflow tracking
server, random-policy episodes and an algorithm's θ."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1:port with a sqlite store under ``root``."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.5)
        self.pids |= {self.proc.pid} | descendants(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the server's process group (the server and its workers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.pids |= descendants(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        deadline = time.time() + 10
        while any(alive(p) for p in self.pids) and time.time() < deadline:
            time.sleep(0.2)


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


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[Server]:
    """A started :class:`Server` under ``root``; afterwards killed, and none of its
    processes may be left."""
    srv = Server(root, free_port())
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()
        assert not [p for p in srv.pids if alive(p)], "mlflow server processes left"


def theta(algo) -> dict[str, np.ndarray]:
    """The algorithm's meta-parameters θ as numpy arrays (its Learner's copy)."""
    return algo._on_learner(lambda learner: learner.theta_weights())
