"""Per training iteration: the CPO cases of the inner and outer steps and the batches' costs.

Asks where a constrained meta-learner's training steps go: how often the outer step is a
recovery, and what an inner step does to the cost of the batches it is taken on (each task's
round-0 batch, sampled by θ, against its query batch, sampled by the adapted policy). Costs
are the learning batches' mean episode costs: this records the training dynamics, it is not
an evaluation of θ.

    python research/training_cases.py --family PointCircle --seeds 0 1 2 --iterations 30 \
        --set inner_cost_free_scale=0.25 [--env-config JSON] --out OUT

Every record is written to ``--out`` as it comes; runs already there are skipped.
``--summarise`` prints each seed's figures from ``--out`` instead (:func:`summary`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="PointCircle")
    p.add_argument("--algo", default="meta-cpo")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--tasks-per-iteration", type=int, default=4)
    p.add_argument("--inner-delta", type=float, default=0.003)
    p.add_argument("--env-config", type=json.loads, default={}, metavar="JSON",
                   help="family overrides, e.g. '{\"ranges\": {\"train\": "
                        "{\"factor\": [0.28, 0.75]}}}' (walls as close as test_tight's)")
    p.add_argument("--set", nargs="*", default=[], type=field_value, metavar="FIELD=VALUE",
                   help="extra .training() fields, numbers only (e.g. inner_cost_free_scale=0.25)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--summarise", action="store_true",
                   help="print each seed's summary of --out; run nothing")
    return p.parse_args(argv)


def field_value(text: str) -> tuple[str, float]:
    """'name=number' → (name, number)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIELD=NUMBER, got {text!r}") from None


#: The outer step's figures kept per iteration besides its case and c: the first-order
#: predictions, the realised surrogate changes on the batch (and of θ's own cost), and the
#: line search's outcome.
OUTER_DETAILS = ("outer_predicted_cost_change", "outer_surrogate_cost_change",
                 "outer_predicted_reward_change", "outer_surrogate_reward_change",
                 "outer_constraint_on_theta", "outer_theta_cost_change", "outer_kl",
                 "line_search_accepted")


def iteration_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """The cases and costs of one iteration (``algo.train()["metacpo"]``)."""
    update, tasks = metrics["update"], metrics["per_task"]
    return {"outer_case": update["outer_case"],
            "outer_constraint_value": update["outer_constraint_value"],
            **{k: update[k] for k in OUTER_DETAILS},
            "inner_cases": {k.removeprefix("inner_case_"): update[k] for k in update
                            if k.startswith("inner_case_")},
            "cost_limit": tasks["cost_limit"],
            "pre_cost": tasks["pre_cost"], "post_cost": tasks["post_cost"],
            "pre_return": tasks["pre_return"], "post_return": tasks["post_return"]}


def summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """One seed's figures: outer recoveries (case 0), inner steps on batches that saw no
    cost, the mean cost of the query batches after them and the share of those that saw
    cost, the mean cost change of the other inner steps (query minus round 0), and what the
    recoveries did (:func:`recovery_summary`)."""
    after_free, change_other = [], []
    for record in records:
        for pre, post in zip(record["pre_cost"], record["post_cost"]):
            (after_free if pre == 0.0 else change_other).append(post - pre)
    return {"iterations": len(records),
            "outer_recoveries": sum(r["outer_case"] == 0 for r in records),
            "cost_free_inner_steps": len(after_free),
            "query_cost_after_cost_free": _mean(after_free),
            "share_of_those_with_cost": _mean([float(c > 0) for c in after_free]),
            "other_inner_steps": len(change_other),
            "cost_change_after_others": _mean(change_other),
            **recovery_summary(records)}


def recovery_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """What the outer recoveries (case 0) promised and what followed: their mean predicted
    cost change (first order, of the step the line search kept), the share of them where
    c was θ's own cost (``theta_cost_constraint``), and the mean change of θ's batch cost
    (round 0, mean over tasks) from that iteration to the next; and θ's mean batch cost
    over the last ten iterations. The next iteration samples other tasks, and a recovery
    follows a costly batch, so that change includes the regression to the mean of a batch
    cost selected for being high: compare it only between recoveries triggered alike (CPO's,
    or Meta-CPO's on θ's own cost). NaN for fields that older records lack."""
    theta_cost = [_mean(r["pre_cost"]) for r in records]
    recoveries = [i for i, r in enumerate(records) if r["outer_case"] == 0]
    recorded = (lambda key: _mean([records[i].get(key, math.nan) for i in recoveries]))
    return {"recovery_predicted_cost_change": recorded("outer_predicted_cost_change"),
            "recovery_on_theta_cost": recorded("outer_constraint_on_theta"),
            "theta_cost_change_after_recovery": _mean(
                [theta_cost[i + 1] - theta_cost[i] for i in recoveries
                 if i + 1 < len(records)]),
            "theta_cost_last_10": _mean(theta_cost[-10:])}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def run_one(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    from metacpo_rllib.rllib import ALGO_CONFIGS

    config = (ALGO_CONFIGS[args.algo]().environment(args.family, env_config=args.env_config)
              .training(seed=seed, episodes_per_task=args.episodes_per_task,
                        tasks_per_iteration=args.tasks_per_iteration,
                        inner_delta=args.inner_delta, **dict(args.set)))
    algo = config.build_algo()
    try:
        return [iteration_record(algo.train()["metacpo"]) for _ in range(args.iterations)]
    finally:
        algo.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarise:
        for seed, records in json.loads(args.out.read_text())["runs"].items():
            print(seed, json.dumps({k: round(v, 2) for k, v in summary(records).items()}))
        return 0
    import ray

    results: dict[str, Any] = (json.loads(args.out.read_text()) if args.out.exists()
                               else {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()}})
    runs = results.setdefault("runs", {})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="metacpo-cases-", dir="/tmp"))
    try:
        for seed in args.seeds:
            if f"seed{seed}" in runs:
                continue
            runs[f"seed{seed}"] = run_one(args, seed)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1, default=float))
            os.replace(tmp, args.out)
            print(f"seed {seed}: done", flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
