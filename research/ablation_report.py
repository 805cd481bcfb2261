"""Markdown tables of research/safety_ablation.py's JSON: training evaluation and every
adaptation step, per variant and algorithm, mean ± std over the seeds that finished.

    python research/ablation_report.py research/results/safety_ablation_pointcircle.json \
        --out docs/SAFETY_ABLATION.md
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from metacpo_rllib.evaluation_stats import across_seeds, format_pm


def _pm(values: list[float], digits: int = 1) -> str:
    return format_pm(across_seeds(values), digits)


#: What each variant switches on (research/safety_ablation.py's VARIANTS).
VARIANT_MEANING = {
    "baseline": "plain CPO steps",
    "share": "`cost_signal_share`",
    "ucb": "`cost_upper_bound`",
    "recover": "`recover_when_violating`",
    "ucb_recover": "`cost_upper_bound` and `recover_when_violating`",
    "share_ucb": "`cost_signal_share` and `cost_upper_bound` (`all` without "
                 "`recover_when_violating`: c > 0 takes the CPO case-1 step where feasible)",
    "all": "the three safety corrections (each on by default)",
    "all_obsnorm": "`all` plus `normalize_observations`",
    "all_critics": "`all` plus learned reward and cost critics (`critics`)",
    "all_critics_priv": "`all_critics` whose critics also see the task's layout and limit "
                        "(`critic_privileged`)",
    "all_inner_adapt": "`all` whose training inner steps take the adaptation defaults' "
                       "radius factors: 1/4 on batches without cost, 6 when c > 0 "
                       "(`inner_cost_free_scale`, `inner_recovery_scale`)",
    "all_inner_free": "`all` whose training inner steps on batches without cost take 1/4 of "
                      "the radius (`inner_cost_free_scale`)",
    "all_inner_free05": "`all` whose training inner steps on batches without cost take half "
                        "the radius (`inner_cost_free_scale`)",
    "all_inner_free_theta": "`all_inner_free` whose outer step also keeps θ's own cost "
                            "(`theta_cost_constraint`)",
    "all_win32": "`all` whose outer J_C pools the latest 32 query episodes of earlier "
                 "iterations (`train_cost_window`)",
    "all_win64": "`all` with a J_C window of 64 query episodes (`train_cost_window`)",
    "all_win128": "`all` with a J_C window of 128 query episodes (`train_cost_window`)",
    "all_margin30": "`all` whose outer constraint aims at 0.7 h (`train_limit_margin`)",
    "all_margin50": "`all` whose outer constraint aims at 0.5 h (`train_limit_margin`)",
    "all_anneal": "`all` whose outer radius shrinks from 0.01 to 0.002 over iterations "
                  "20–29 (`trust_region_schedule`)",
    "all_margin30_anneal": "`all_margin30` with the radius of `all_anneal`",
    "all_outer_rec3": "`all` whose outer step takes 3 times the radius when c > 0 "
                      "(`outer_recovery_scale`)",
    "all_eps8": "`all` with 8 episodes per task and sampling round instead of 4 "
                "(`episodes_per_task`)",
    "all_eps8_outer_rec3": "`all_eps8` and `all_outer_rec3` together",
    "all_theta_outer_rec3": "`all_outer_rec3` whose outer step also keeps θ's own cost "
                            "(`theta_cost_constraint`)",
    "all_eps8_theta_outer_rec3": "`all_theta_outer_rec3` with 8 episodes per task and "
                                 "round",
    "all_eps8_theta_outer_rec3_share_violating": (
        "`all_eps8_theta_outer_rec3` whose signal share shrinks only the cost gradient of "
        "violating batches (`cost_signal_share_scope`; the training defaults until "
        "`inner_cost_free_scale` became 0.25)"),
    "all_eps8_theta_outer_rec3_share_violating_inner_free": (
        "`all_eps8_theta_outer_rec3_share_violating` with training's inner steps on batches "
        "that saw no cost at 1/4 of `inner_delta` (`inner_cost_free_scale` 0.25; the "
        "training defaults now)"),
    "all_eps4_theta_outer_rec3_share_violating_inner_free": (
        "the training defaults with 4 episodes per task and round instead of 8"),
    "all_eps8_theta_outer_rec3_share_violating_inner_free_margin50": (
        "the training defaults with the outer constraint aiming at 0.5 h "
        "(`train_limit_margin` 0.5; every cost still reported against h)"),
    "untrained": "θ at initialisation (0 training iterations), adapted alike",
}
SCORING = ("Costs and returns are means over evaluation episodes, never the learning batches; "
           "± is the std over seeds (none with one seed). Beside each mean cost stands an "
           "upper bound: in training θ's one-sided 95% upper confidence bound of its "
           "task-averaged cost, per adaptation step the share of tasks *certified*, whose "
           "own one-sided 95% upper bound is ≤ h.")


#: What the parts of an adaptation setting (``--adapt-settings``) set.
SETTING_MEANING = ("`winN`: J_C of each adaptation step pools up to N of the task's episodes "
                   "from its earlier steps (`adaptation_cost_window`); `adX`: every "
                   "adaptation step has trust-region radius X (`adaptation_delta`; default: "
                   "the inner radius for Meta-CPO, the outer one with a line search for "
                   "CPO); `freeF`: the radius of a step whose batch saw no cost is F times "
                   "that (`adaptation_cost_free_scale`); `recR`: the radius of a step with "
                   "c > 0 is R times that (`adaptation_recovery_scale`); `marM`: c includes "
                   "a margin that moves by M times each step's realised minus predicted "
                   "cost change (`adaptation_cost_margin_rate`); `roomK`: a step below its "
                   "limit takes a radius in which the first-order cost rises by at most K "
                   "times the room h − J_C (`adaptation_cost_room`); `limF`: every "
                   "adaptation step aims at (1 − F)·h, costs still scored against h "
                   "(`adaptation_limit_margin`); `btR`: a step whose "
                   "policy's next learning batch costs more than h and the batch it learned "
                   "from is halved and sampled again, up to R times, then undone "
                   "(`adaptation_backtracks`; each rejection costs one more batch); "
                   "`ucb1`: that check holds the batch's one-sided 95% upper bound to h "
                   "instead of its mean (`adaptation_backtrack_bound`); `fresh1`: the "
                   "next step learns from a fresh batch, not the one that passed the check "
                   "(`adaptation_backtrack_fresh`; one more batch per step); "
                   "`epsE`: every adaptation "
                   "batch has E episodes per task (`adaptation_episodes_per_task`; a "
                   "setting without it ran when the adaptation batch was the training "
                   "batch, the default then); `firstE`: the first adaptation batch alone "
                   "(θ's, which step 1 learns from) has E episodes per task "
                   "(`adaptation_first_episodes_per_task`)")


def run_label(run: dict[str, Any]) -> str:
    """The row label of a run: its variant, plus its adaptation setting if not the default;
    a setting that does not name its adaptation batch gets the episodes per task the run
    recorded ('+eps<E>'), so rows of runs made under different defaults stay apart."""
    setting = run.get("adapt_setting", "default")
    episodes = run.get("adaptation_episodes")
    if setting == "default":
        return run["variant"]
    if episodes is not None and "eps" not in setting:
        setting = f"{setting}+eps{episodes}"
    return f"{run['variant']} + {setting}"


def legend(data: dict[str, Any]) -> str:
    """What the variants in ``data`` switch on, and how the tables are scored."""
    order = list(VARIANT_MEANING)
    runs = data["runs"].values()
    variants = sorted({run["variant"] for run in runs},
                      key=lambda v: order.index(v) if v in order else len(order))
    named = ", ".join(f"`{v}` ({VARIANT_MEANING.get(v, v)})" for v in variants)
    settings = ("" if all(run.get("adapt_setting", "default") == "default" for run in runs)
                else f" Adaptation settings (one trained θ per algorithm and seed, adapted "
                     f"with each): {SETTING_MEANING}.")
    return f"Variants: {named}.{settings} {SCORING}"


def report(data: dict[str, Any]) -> str:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in data["runs"].values():
        groups[(run_label(run), run["algo"])].append(run)
    settings = data.get("settings", {})
    lines = [f"Family {settings.get('family')}, {settings.get('iterations')} training iterations "
             f"(h = training limit), {settings.get('test_tasks')} held-out tasks per split, "
             f"{settings.get('adapt_steps')} adaptation steps, {settings.get('eval_episodes')} "
             "evaluation episodes per task and step (common random numbers), "
             f"{settings.get('train_eval_episodes')} per training task.", "",
             "| variant | algorithm | seeds | train eval cost | train eval cost 95% UCB | "
             "train eval return |",
             "|---|---|---|---|---|---|"]
    for (variant, algo), runs in groups.items():
        finals = [r["final_train_eval"] for r in runs if r["final_train_eval"]]
        lines.append(f"| {variant} | {algo} | {len(runs)} | "
                     f"{_pm([f['eval_cost'] for f in finals])} (h = "
                     f"{finals[0]['cost_limit'] if finals else 'n/a'}) | "
                     f"{_pm([f['eval_cost_ucb'] for f in finals])} | "
                     f"{_pm([f['eval_return'] for f in finals], 2)} |")
    for split in settings.get("splits", []):
        lines += ["", f"Adaptation on `{split}` (evaluation cost / share of tasks within h / "
                      "share certified / return, per step 0..S):", "",
                  "| variant | algorithm | seeds | cost per step | within h per step | "
                  "certified per step | return per step |", "|---|---|---|---|---|---|---|"]
        for (variant, algo), runs in groups.items():
            adapts = [r["adaptation"][split] for r in runs if split in r["adaptation"]]
            if not adapts:
                continue
            steps = len(adapts[0]["eval_cost"])

            def per_step(key: str, digits: int) -> str:
                return " → ".join(_pm([a[key][s] for a in adapts], digits)
                                  for s in range(steps))

            lines.append(f"| {variant} | {algo} | {len(adapts)} | {per_step('eval_cost', 1)} | "
                         f"{per_step('within_limit', 2)} | {per_step('certified', 2)} | "
                         f"{per_step('eval_return', 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--out", type=Path, help="write a Markdown page here (else: stdout)")
    args = parser.parse_args(argv)
    tables = report(json.loads(args.json.read_text()))
    if args.out is None:
        print(tables)
        return 0
    args.out.write_text(
        "# Safety corrections: ablation\n\n"
        "Generated by `python research/ablation_report.py "
        f"{args.json.as_posix()} --out {args.out.as_posix()}` from the JSON that "
        "`research/safety_ablation.py` writes (its docstring has the command); do not edit by "
        f"hand. {legend(json.loads(args.json.read_text()))}\n\n" + tables + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
