"""Is the cost surrogate predictive? Predicted vs realised cost change of one CPO recovery step.

    python research/surrogate_check.py --family PointCircle \
        [--checkpoint DIR] [--label NAME] [--batch-episodes 2 8] [--out PATH]

For a policy (the initial one, or a trained RLlib checkpoint) and a few training tasks:
sample a batch, take the pure cost-descent step that CPO takes when a task is infeasible
(recovery, trust region ``delta``), and compare the surrogate's predicted change of the
mean episode cost (bᵀx) with the change measured on fresh episodes (the same env and
noise seeds before and after the step). Also reports how well cost gradients b from
disjoint batches agree (cosine). Ray-free; one process; the episodes come from the sampler
of training (``metacpo_rllib.rollout``: the same seeding, clipping and dtypes).
"""
from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from metacpo_rllib import provenance
from metacpo_rllib.envs import make_family
from metacpo_rllib.optim import GaussianMLP
from metacpo_rllib.optim.batch import Batch, make_batch
from metacpo_rllib.optim.cpo import CPOStep
from metacpo_rllib.optim.meta import UpdateConfig, constrained_step
from metacpo_rllib.optim.policy import Params, add_step, detached, flatten, params_of
from metacpo_rllib.optim.surrogate import surrogates
from metacpo_rllib.rollout import sample_episodes, sampling_policy

MODULE_STATE = Path("learner_group/learner/rl_module/default_policy/module_state.pkl")


def load_policy(obs_dim: int, act_dim: int, checkpoint: Optional[str], seed: int) -> GaussianMLP:
    """The (32, 16) GaussianMLP: freshly initialised (``seed``) or from an algorithm checkpoint."""
    from metacpo_rllib.rllib.module import weights_to_params

    torch.manual_seed(seed)
    policy = GaussianMLP(obs_dim, act_dim)
    if checkpoint:
        with open(Path(checkpoint) / MODULE_STATE, "rb") as f:
            params = weights_to_params(pickle.load(f))
        policy.load_state_dict({k: v.float() for k, v in params.items()})
    return policy


def cost_gradient_at(policy: GaussianMLP, params: Params, batch: Batch) -> torch.Tensor:
    """b = ∇ of the importance-weighted cost surrogate (mean episode cost units) at
    ``params`` on ``batch``."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    _, cost = surrogates(policy, leaves, batch)
    return flatten(torch.autograd.grad(cost, list(leaves.values())))


def cost_gradient(policy: GaussianMLP, episodes: Sequence[Any], cost_limit: float) -> torch.Tensor:
    """b = ∇ of the cost surrogate (mean episode cost units) at the sampling policy."""
    return cost_gradient_at(policy, params_of(policy), make_batch(episodes, cost_limit=cost_limit))


def recovery_step(policy: GaussianMLP, params: Params, batch: Batch, radius: float,
                  cfg: UpdateConfig) -> tuple[Params, CPOStep, torch.Tensor]:
    """CPO's pure cost-descent step of KL radius ``radius`` from ``params`` on ``batch``
    (c far above 0: the infeasible case, x = −√(2δ / bᵀH⁻¹b) H⁻¹b, whatever the task's
    limit): (the parameters after it, the step, b at ``params``; bᵀx is its predicted
    change of the mean episode cost)."""
    b = cost_gradient_at(policy, params, batch)
    step = constrained_step(policy, params, torch.zeros_like(b), b, 1e6, radius, batch.obs,
                            cfg, create_graph=False)
    return detached(add_step(params, step.x.detach())), step, b


def mean_costs(env: Any, policy: GaussianMLP, params: Any, episodes: int, seed: int) -> np.ndarray:
    """Episode costs of ``episodes`` episodes; env resets and action noise seeded by ``seed``."""
    eps = sample_episodes(env, sampling_policy(policy, params), episodes, seed)
    return np.array([float(e.costs.sum()) for e in eps])


def check_task(env: Any, policy: GaussianMLP, cost_limit: float, batch_sizes: Sequence[int],
               eval_episodes: int, delta: float, seed: int) -> dict[str, Any]:
    """Recovery steps from batches of each size vs the realised change on fresh episodes."""
    theta = detached(params_of(policy))
    pool = sample_episodes(env, sampling_policy(policy, theta), 2 * max(batch_sizes), seed)
    before = mean_costs(env, policy, theta, eval_episodes, seed + 10_000)
    cfg = UpdateConfig(delta=delta, inner_delta=delta)
    steps = []
    for n in batch_sizes:
        stepped, step, b = recovery_step(policy, theta,
                                         make_batch(pool[:n], cost_limit=cost_limit), delta, cfg)
        b_other = cost_gradient(policy, pool[n:2 * n], cost_limit)
        after = mean_costs(env, policy, stepped, eval_episodes, seed + 10_000)
        diff = after - before
        norm = float(b.norm() * b_other.norm())
        steps.append({
            "batch_episodes": n, "case": int(step.case),
            "batch_cost_mean": float(np.mean([e.costs.sum() for e in pool[:n]])),
            "other_batch_cost_mean": float(np.mean([e.costs.sum() for e in pool[n:2 * n]])),
            "predicted_change": float(b @ step.x),
            "realised_change": float(diff.mean()),
            "realised_change_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            # None: one of the two batches saw no cost (b = 0), no direction to compare
            "gradient_cosine_disjoint_batch": float(b @ b_other) / norm if norm > 0 else None,
        })
    return {"cost_before": float(before.mean()),
            "cost_before_se": float(before.std(ddof=1) / np.sqrt(len(before))), "steps": steps}


def _cosine(value: Optional[float]) -> str:
    return "n/a (a batch without cost)" if value is None else f"{value:+.2f}"


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="PointCircle")
    parser.add_argument("--checkpoint", default=None,
                        help="an algorithm checkpoint folder (default: the initial policy)")
    parser.add_argument("--label", default=None, help="name of the policy in the report")
    parser.add_argument("--tasks", type=int, default=2, help="training tasks to check")
    parser.add_argument("--task-seed", type=int, default=3)
    parser.add_argument("--batch-episodes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--eval-episodes", type=int, default=40)
    parser.add_argument("--delta", type=float, default=0.01, help="trust region (KL)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    family = make_family(args.family)
    tasks = family.sample_tasks(args.tasks, "train", seed=args.task_seed)
    rows = []
    for task in tasks:
        env = family.make_env(task)
        policy = load_policy(env.observation_space.shape[0], env.action_space.shape[0],
                             args.checkpoint, args.seed)
        row = check_task(env, policy, task.cost_limit, args.batch_episodes,
                         args.eval_episodes, args.delta, args.seed)
        env.close()
        rows.append({"task": task.to_dict(), **row})
        for s in row["steps"]:
            print(f"task {task.task_id} cost {row['cost_before']:7.2f}  batch {s['batch_episodes']:2d} "
                  f"eps: predicted {s['predicted_change']:+8.2f}  realised "
                  f"{s['realised_change']:+8.2f} ± {s['realised_change_se']:.2f}  "
                  f"cos(b, b') {_cosine(s['gradient_cosine_disjoint_batch'])}")
    report = {"family": args.family, "policy": args.label or args.checkpoint or "initial",
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "label")},
              "tasks": rows, "provenance": provenance.provenance()}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
