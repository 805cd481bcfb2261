"""Benchmark of the meta-update: exact meta-gradient vs first-order vs one backward per parameter.

Prints a table and writes JSON. Setting: the default policy (32, 16) on PointCircle's
28-dimensional observation, synthetic batches of ``--steps`` steps per task.
The CPO-step backends are benchmarked by ``bench_cpo_step.py``; ``--with-cpo-step`` runs it too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import sys as _sys
_sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402  (shared provenance helper)

from metacpo_rllib.optim import Batch, GaussianMLP, UpdateConfig, params_of
from metacpo_rllib.optim.meta import adapt, adapt_tasks, meta_gradients
from metacpo_rllib.optim.policy import detached, flatten, forward, log_prob
from metacpo_rllib.optim.surrogate import surrogates

OBS_DIM, ACT_DIM = 28, 2


def synthetic_batch(module, params, steps: int, gen: torch.Generator, task_id: int) -> Batch:
    obs = torch.randn(steps, OBS_DIM, generator=gen)
    with torch.no_grad():
        mean, log_std = forward(module, params, obs)
        actions = mean + log_std.exp() * torch.randn(mean.shape, generator=gen)
        logp = log_prob(mean, log_std, actions)
    episodes = max(steps // 500, 1)
    return Batch(obs, actions, logp, torch.randn(steps, generator=gen),
                 torch.randn(steps, generator=gen), torch.zeros(episodes),
                 torch.full((episodes,), 12.0), task_id=task_id, cost_limit=10.0)


def make_problem(cfg: UpdateConfig, tasks: int, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    module = GaussianMLP(OBS_DIM, ACT_DIM)
    theta = detached(params_of(module))
    support, query = [], []
    for i in range(tasks):
        phi, batches = theta, []
        for _ in range(cfg.inner_steps):
            batches.append(synthetic_batch(module, phi, steps, gen, i))
            phi, _ = adapt(module, phi, batches[-1:], cfg)
        support.append(batches)
        query.append(synthetic_batch(module, phi, steps, gen, i))
    return module, theta, support, query


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def per_parameter_gradient(module, theta, support, query, cfg) -> torch.Tensor:
    """Reference: the Jacobian dφ^K/dθ row by row (one backward pass per parameter), then
    g = Σ_i J_iᵀ ∇_φ L_i(φ_i^K) — the cost structure of the authors' meta-gradient."""
    tensors = list(theta.values())
    g = torch.zeros(sum(t.numel() for t in tensors))
    for task_support, task_query in zip(support, query):
        phi, _ = adapt(module, theta, task_support, cfg, create_graph=True)
        phi_flat = flatten(phi)
        leaf = detached(phi)
        reward, _ = surrogates(module, leaf, task_query)
        outer = flatten(torch.autograd.grad(reward, list(leaf.values())))
        for j in range(phi_flat.numel()):
            row = flatten(torch.autograd.grad(phi_flat[j], tensors, retain_graph=True))
            g += outer[j] * row
    return g / len(query)


def run(metric: str, tasks: int, inner_steps: int, steps: int, repeats: int,
        reference: bool) -> dict:
    cfg = UpdateConfig(inner_steps=inner_steps, metric=metric,
                       inner_delta=0.01 if metric == "fisher" else 0.005)
    module, theta, support, query = make_problem(cfg, tasks, steps)
    n = flatten(theta).numel()

    # Both gradients without solves handed over: each pays its inner steps in full.
    t_exact, (_, _, g_exact, _, _) = timed(
        lambda: meta_gradients(module, theta, support, query, cfg), repeats)
    fo_cfg = UpdateConfig(**{**cfg.__dict__, "first_order": True})
    t_first, _ = timed(lambda: meta_gradients(module, theta, support, query, fo_cfg), repeats)
    # As in the Learner: the inner steps taken from θ hand their solves to the replay.
    _, task_steps = adapt_tasks(module, theta, support, cfg)
    solves = [[step.metric_solution for step in steps] for steps in task_steps]
    t_kept, _ = timed(lambda: meta_gradients(module, theta, support, query, cfg, solves),
                      repeats)
    row = {"metric": metric, "tasks": tasks, "inner_steps": inner_steps, "steps_per_batch": steps,
           "n_params": n, "exact_s": t_exact, "first_order_s": t_first,
           "exact_over_first_order": t_exact / t_first, "exact_kept_solve_s": t_kept}
    if reference:
        t_ref, g_ref = timed(lambda: per_parameter_gradient(module, theta, support, query, cfg), 1)
        # the reference covers the reward gradient only; the exact timing covers g and b
        row.update(per_parameter_s=t_ref, per_parameter_over_exact=t_ref / t_exact,
                   max_abs_diff=float((g_ref - g_exact).abs().max()),
                   max_abs_g=float(g_exact.abs().max()))
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/update.json")
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the slow one-backward-per-parameter reference")
    parser.add_argument("--with-cpo-step", action="store_true",
                        help="also run bench_cpo_step.py (the backends table)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [run(metric, args.tasks, args.inner_steps, args.steps, args.repeats,
                not args.no_reference) for metric in ("euclidean", "fisher")]
    header = f"{'metric':<10}{'n':>7}{'exact s':>10}{'1st-ord s':>11}{'ratio':>8}" \
             f"{'per-param s':>13}{'speed-up':>10}{'max|Δg|':>10}"
    print(header)
    for r in rows:
        print(f"{r['metric']:<10}{r['n_params']:>7}{r['exact_s']:>10.4f}{r['first_order_s']:>11.4f}"
              f"{r['exact_over_first_order']:>8.2f}{r.get('per_parameter_s', float('nan')):>13.2f}"
              f"{r.get('per_parameter_over_exact', float('nan')):>10.0f}"
              f"{r.get('max_abs_diff', float('nan')):>10.1e}")
    result = {"benchmark": "meta_update", **provenance(), "torch_threads": 1, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if args.with_cpo_step:
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_cpo_step.py"))],
                       check=True)
    return result


if __name__ == "__main__":
    main()
