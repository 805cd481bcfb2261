"""Where a policy's episodes end: the agent's final position against the layout's square.

Asks how a policy keeps its cost low on a layout family whose arena has no walls
(PointButton): by steering between the hazards, or by leaving the square in which buttons
and hazards are placed. Each policy (an algorithm or RLModule checkpoint, or ``random`` for
N(0, 1) actions clipped to the action bounds) runs ``--episodes`` episodes on each of
``--tasks`` tasks of ``--split`` with the evaluation's rollout and common random numbers
(the same env seeds and action noise for every policy); the record per policy is
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

#: The pseudo-path of the random-action policy: N(0, 1) actions, clipped to the action bounds.
RANDOM = "random"
#: The evaluation seed of every task's episodes (``rollout.evaluation_seed``).
EVAL_SEED = 0


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
                   help=f"checkpoint folders, or '{RANDOM}' for N(0, 1) actions, each "
                        "optionally labelled")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def policy_function(path: str, act_dim: int
                    ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The (mean, log_std) function of ``path``: a checkpoint's policy, loaded once, or
    ``random`` (mean 0, log_std 0 over ``act_dim`` actions)."""
    if path == RANDOM:
        return lambda obs: (np.zeros((len(obs), act_dim), np.float32),
                            np.zeros((len(obs), act_dim), np.float32))
    from metacpo_rllib.evaluate import policy_fn
    from metacpo_rllib.policy import load_policy
    return policy_fn(load_policy(path))


def task_episodes(env: Any, task: Any, policy: Callable, episodes: int
                  ) -> tuple[list[float], list[float], list[float]]:
    """Per episode of ``policy`` on ``task`` in ``env`` (made for ``task``; every episode
    starts from a seeded reset, the evaluation's common random numbers): the return, the
    cost and the final max(|x|, |y|) / extent."""
    from metacpo_rllib.rollout import evaluation_seed, rollout

    ends: list[float] = []

    def record_end(_: int) -> None:  # called after an episode's last step, before a reset
        position = np.asarray(env.unwrapped.sim_task.agent.pos[:2], dtype=float)
        ends.append(float(np.abs(position).max() / task.params["extent"]))

    space = env.action_space
    data, _, _ = rollout([env], policy, episodes, evaluation_seed(EVAL_SEED, task.to_dict()),
                         space.low.astype(np.float32), space.high.astype(np.float32),
                         on_episode=record_end)
    return ([float(d.rewards.sum()) for d in data], [float(d.costs.sum()) for d in data], ends)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from metacpo_rllib.envs import make_family

    overrides = {} if args.episode_steps is None else {"max_episode_steps": args.episode_steps}
    family = make_family(args.family, **overrides)
    tasks = family.sample_tasks(args.tasks, split=args.split, seed=args.task_seed)
    envs = [family.make_env(task) for task in tasks]  # one per task, shared by the policies
    act_dim = int(envs[0].action_space.shape[0])
    records = {}
    try:
        for entry in args.policies:
            label, _, path = entry.rpartition("=")
            policy = policy_function(path, act_dim)
            returns, costs, ends = [], [], []
            for env, task in zip(envs, tasks):
                task_returns, task_costs, task_ends = task_episodes(env, task, policy,
                                                                    args.episodes)
                returns += task_returns
                costs += task_costs
                ends += task_ends
            ends_arr = np.asarray(ends)
            records[label or path] = {
                "episodes": len(ends), "mean_return": float(np.mean(returns)),
                "mean_cost": float(np.mean(costs)),
                "mean_end_over_extent": float(ends_arr.mean()),
                "share_ending_outside": float((ends_arr > 1.0).mean())}
    finally:
        for env in envs:
            env.close()
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
