"""How far can one adaptation step lower the cost? The realised cost along CPO's recovery step.

    python research/recovery_path.py --family PointCircle --split test_tight \
        --checkpoints CKPT/seed0/algorithm CKPT/seed1/algorithm ... \
        [--radius 0.003] [--scales 6 12 24 48 96 192] [--substeps 4] \
        [--batch-episodes 256] [--eval-episodes 40] [--out PATH]

For each trained θ (an algorithm checkpoint) and each held-out task: sample one batch at θ,
take the pure cost-descent step (CPO's recovery, x = −√(2δ / bᵀH⁻¹b) H⁻¹b: the largest
first-order cost drop a trust region of radius δ allows) at radius ``scale × radius`` for
each scale; and ``substeps`` such steps in a row, each of radius ``substep-scale × radius``
and re-linearised at the previous one's parameters on the same batch (the gradient of the
importance-weighted cost surrogate and the Fisher metric there).
For every policy reached it reports the first-order prediction bᵀx (of that step alone),
the change of the importance-weighted cost surrogate from θ on the batch, the mean KL from
θ on the batch's states, and the mean episode cost on ``eval-episodes`` fresh episodes,
scored twice on two disjoint sets of evaluation seeds (the same seeds for every policy of
a task), so that the radius chosen per task on the first set can be scored on the second.

Costs are mean episode costs (sum of per-step costs); KL is KL(π_θ ‖ π) in nats. Ray-free;
one process; the sampler of training (``metacpo_rllib.rollout``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from metacpo_rllib import provenance
from metacpo_rllib.envs import make_family
from metacpo_rllib.optim import GaussianMLP
from metacpo_rllib.optim.batch import Batch, make_batch
from metacpo_rllib.optim.meta import UpdateConfig
from metacpo_rllib.optim.policy import Params, detached, params_of
from metacpo_rllib.optim.surrogate import mean_kl, surrogates
from metacpo_rllib.rollout import sample_episodes, sampling_policy
from research.surrogate_check import load_policy, mean_costs, recovery_step

#: offsets of the batch's and the two evaluation sets' seeds (disjoint episode streams)
BATCH_SEED, EVAL_SEEDS = 1_000, (50_000, 90_000)
#: bands of θ's cost on a task (mean episode cost) in the summary: [low, high), None: no bound
START_BANDS = ((0.0, 30.0), (30.0, 60.0), (60.0, None))


def surrogate_cost(policy: GaussianMLP, params: Params, batch: Batch) -> float:
    """The importance-weighted cost surrogate of ``params`` on ``batch``."""
    with torch.no_grad():
        return float(surrogates(policy, params, batch)[1])


def check_task(env: Any, policy: GaussianMLP, cost_limit: float, args: argparse.Namespace,
               cfg: UpdateConfig, seed: int) -> dict[str, Any]:
    """One task: the batch, then every policy of the recovery path, scored."""
    theta = detached(params_of(policy))
    episodes = sample_episodes(env, sampling_policy(policy, theta), args.batch_episodes,
                               seed + BATCH_SEED)
    batch = make_batch(episodes, cost_limit=cost_limit, gamma=args.gamma,
                       cost_lam=args.cost_lambda)
    start = surrogate_cost(policy, theta, batch)

    def scored(params: Params, predicted: float) -> dict[str, float]:
        costs = [mean_costs(env, policy, params, args.eval_episodes, seed + s).mean()
                 for s in EVAL_SEEDS]
        with torch.no_grad():
            kl = float(mean_kl(policy, theta, params, batch.obs))
        return {"predicted_change": predicted,
                "surrogate_change": surrogate_cost(policy, params, batch) - start,
                "kl": kl, "cost": float(costs[0]), "cost_other_seeds": float(costs[1])}

    single = []
    for scale in args.scales:
        params, step, b = recovery_step(policy, theta, batch, scale * args.radius, cfg)
        single.append({"scale": scale, **scored(params, float(b @ step.x))})
    substeps, params = [], theta
    for k in range(1, args.substeps + 1):
        params, step, b = recovery_step(policy, params, batch,
                                        args.substep_scale * args.radius, cfg)
        substeps.append({"substeps": k, **scored(params, float(b @ step.x))})
    return {"batch_cost": float(batch.ep_costs.mean()), "theta": scored(theta, 0.0),
            "single": single, "substeps": substeps}


def _path_point(rows: Sequence[dict[str, Any]], pick: Any) -> dict[str, float]:
    """Means over task-θ pairs of one policy of the path (``pick(row)``, its ``"cost"`` on
    the first evaluation seeds) and the share of pairs within their limit."""
    points = [pick(r) for r in rows]
    return {"within": float(np.mean([p["cost"] <= r["cost_limit"]
                                     for p, r in zip(points, rows)])),
            "cost": float(np.mean([p["cost"] for p in points])),
            "realised_change": float(np.mean([p["cost"] - r["theta"]["cost"]
                                              for p, r in zip(points, rows)])),
            "surrogate_change": float(np.mean([p["surrogate_change"] for p in points])),
            "kl": float(np.mean([p["kl"] for p in points]))}


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over all task-θ pairs (on the first evaluation seeds): θ's and each scale's and each
    sub-step count's share within h and means (``predicted_change`` of a sub-step count: the
    sum of its steps' predictions); per task the scale with the lowest cost on the first
    seeds, scored on the other seeds (``chosen_within``) and on the same (``best_within``);
    ``by_start``: per band of θ's cost (:data:`START_BANDS`) the pairs and how many of them
    each scale and the best scale bring within h."""
    out: dict[str, Any] = {"tasks": len(rows),
                           "theta": _path_point(rows, lambda r: r["theta"])}
    out["scales"] = [{"scale": s["scale"],
                      "predicted_change": float(np.mean([r["single"][i]["predicted_change"]
                                                         for r in rows])),
                      **_path_point(rows, lambda r, i=i: r["single"][i])}
                     for i, s in enumerate(rows[0]["single"])]
    out["substeps"] = [{"substeps": s["substeps"],
                        "predicted_change": float(np.mean(
                            [sum(t["predicted_change"] for t in r["substeps"][:i + 1])
                             for r in rows])),
                        **_path_point(rows, lambda r, i=i: r["substeps"][i])}
                       for i, s in enumerate(rows[0]["substeps"])]
    best = [min(r["single"], key=lambda s: s["cost"]) for r in rows]
    out["best_within"] = float(np.mean([b["cost"] <= r["cost_limit"]
                                        for b, r in zip(best, rows)]))
    out["chosen_within"] = float(np.mean([b["cost_other_seeds"] <= r["cost_limit"]
                                          for b, r in zip(best, rows)]))
    out["by_start"] = []
    for low, high in START_BANDS:  # pairs by θ's cost on the task
        band = [(r, b) for r, b in zip(rows, best)
                if low <= r["theta"]["cost"] and (high is None or r["theta"]["cost"] < high)]
        out["by_start"].append({
            "low": low, "high": high, "pairs": len(band),
            "within": [sum(r["single"][i]["cost"] <= r["cost_limit"] for r, _ in band)
                       for i in range(len(rows[0]["single"]))],
            "best_within": sum(b["cost"] <= r["cost_limit"] for r, b in band)})
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="PointCircle")
    parser.add_argument("--split", default="test_tight")
    parser.add_argument("--checkpoints", nargs="*", default=[],
                        help="algorithm checkpoint folders, one θ each (none: the initial "
                             "policy of --seed)")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--task-seed", type=int, default=12345)
    parser.add_argument("--radius", type=float, default=0.003, help="base KL radius δ")
    parser.add_argument("--scales", type=float, nargs="+", default=[6, 12, 24, 48, 96, 192])
    parser.add_argument("--substeps", type=int, default=4)
    parser.add_argument("--substep-scale", type=float, default=12)
    parser.add_argument("--batch-episodes", type=int, default=256)
    parser.add_argument("--eval-episodes", type=int, default=40)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--cost-lambda", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = UpdateConfig(fisher_stride=5)  # the Fisher metric as the Learner estimates it
    family = make_family(args.family)
    tasks = family.sample_tasks(args.tasks, args.split, seed=args.task_seed)
    rows: list[dict[str, Any]] = []
    report = {"family": args.family, "split": args.split,
              "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "rows": rows, "provenance": provenance.provenance()}
    for theta_index, checkpoint in enumerate(args.checkpoints or [None]):
        for task in tasks:
            env = family.make_env(task)
            policy = load_policy(env.observation_space.shape[0], env.action_space.shape[0],
                                 checkpoint, args.seed)
            row = check_task(env, policy, task.cost_limit, args, cfg,
                             seed=args.seed + 100 * (task.task_id % 1_000_000))
            env.close()
            rows.append({"theta_index": theta_index, "task_id": task.task_id,
                         "cost_limit": task.cost_limit, **row})
            costs = " ".join(f"×{s['scale']:g} {s['cost']:.1f}" for s in row["single"])
            print(f"θ{theta_index} task {task.task_id}: cost {row['theta']['cost']:.1f} → "
                  f"{costs}; sub-steps "
                  + " ".join(f"{s['cost']:.1f}" for s in row["substeps"]), flush=True)
            report["summary"] = summary(rows)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
