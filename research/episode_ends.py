"""Where a policy's episodes end: the agent's final position against the layout's square.

Asks how a policy keeps its cost low on a layout family whose arena has no walls
(PointButton): by steering between the hazards, or by leaving the square in which buttons
and hazards are placed. Each policy (an algorithm or RLModule checkpoint, or ``random`` for
uniform random actions) runs ``--episodes`` episodes on each of ``--tasks`` tasks of
``--split`` (the same tasks and episode seeds for every policy); the record per policy is
the mean episode return and cost, the mean of the final max(|x|, |y|) in units of the task's
``extent`` (the half-width of that square: above 1 lies outside it) and the share of
episodes that end outside the square.

    python research/episode_ends.py --family PointButton --split test --tasks 3 \
        --episodes 4 --policies random seed0=CKPT/algorithm ... --out OUT
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

#: The pseudo-path of the uniform-random-action policy.
RANDOM = "random"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="PointButton")
    p.add_argument("--split", default="test")
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--task-seed", type=int, default=12345)
    p.add_argument("--episode-steps", type=int, default=None,
                   help="episode length (default: the family's)")
    p.add_argument("--policies", nargs="+", required=True, metavar="[LABEL=]PATH",
                   help=f"checkpoint folders, or '{RANDOM}' for uniform random actions, each "
                        "optionally labelled")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def actor(path: str, env: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The action function of ``path`` (a checkpoint, or ``random``) for ``env``."""
    if path == RANDOM:
        return lambda obs: env.action_space.sample()
    from metacpo_rllib.policy import load_policy
    return load_policy(path, seed=0).act


def episode_end(env: Any, act: Callable[[np.ndarray], np.ndarray], seed: int
                ) -> tuple[float, float, np.ndarray]:
    """(return, cost, the agent's final x-y position) of one episode."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    ret = cost = 0.0
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(act(obs))
        ret += float(reward)
        cost += float(info.get("cost", 0.0))
        done = terminated or truncated
    return ret, cost, np.asarray(env.unwrapped.sim_task.agent.pos[:2], dtype=float)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from metacpo_rllib.envs import make_family

    overrides = {} if args.episode_steps is None else {"max_episode_steps": args.episode_steps}
    family = make_family(args.family, **overrides)
    tasks = family.sample_tasks(args.tasks, split=args.split, seed=args.task_seed)
    records = {}
    for entry in args.policies:
        label, _, path = entry.rpartition("=")
        returns, costs, ends = [], [], []
        for task in tasks:
            env = family.make_env(task)
            act = actor(path, env)
            for episode in range(args.episodes):
                ret, cost, position = episode_end(env, act, seed=episode)
                returns.append(ret)
                costs.append(cost)
                ends.append(float(np.abs(position).max() / task.params["extent"]))
            env.close()
        ends_arr = np.asarray(ends)
        records[label or path] = {
            "episodes": len(ends), "mean_return": float(np.mean(returns)),
            "mean_cost": float(np.mean(costs)),
            "mean_end_over_extent": float(ends_arr.mean()),
            "share_ending_outside": float((ends_arr > 1.0).mean())}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"settings": settings, "policies": records}


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| policy | episodes | return | cost | final max(|x|, |y|) / extent | ending outside |")
    print("|---|---:|---:|---:|---:|---:|")
    for path, r in result["policies"].items():
        print(f"| {path} | {r['episodes']} | {r['mean_return']:.2f} | {r['mean_cost']:.1f} | "
              f"{r['mean_end_over_extent']:.2f} | {r['share_ending_outside']:.0%} |")


if __name__ == "__main__":
    main()
