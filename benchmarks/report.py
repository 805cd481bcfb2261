"""Renders docs/BENCHMARKS.md from the benchmark JSON in benchmarks/results (no typed numbers)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results"
DEFAULT_OUT = HERE.parent / "docs" / "BENCHMARKS.md"

#: file stem -> (section title, producing script)
SOURCES = {
    "sampling": ("Sampling efficiency", "bench_sampling.py"),
    "sampling_vector": ("Sampling efficiency with 4 sub-envs per EnvRunner",
                        "bench_sampling.py --envs-per-runner 4 --episodes 4"),
    "lean_rollout": ("Rollout loops without Ray: the per-EnvRunner bound",
                     "bench_lean_rollout.py"),
    "meta_share": ("Meta-update share", "bench_meta_share.py"),
    "cpo_step": ("DCO step (CPO-step backends)", "bench_cpo_step.py"),
    "update": ("Meta-gradient", "bench_update.py"),
    "scaling": ("Scaling with EnvRunners", "bench_scaling.py"),
    "profile": ("Profile of a meta-iteration", "bench_profile.py"),
    "envs": ("Env steps/s: bare safety-gymnasium vs task layer", "bench_envs.py"),
    "fast_step": ("Fast step vs stock step vs bare physics; batched DCO layer",
                  "bench_fast_step.py"),
    "meta_share_backends": ("Meta-update share with the closed form or the DCO layer as the "
                            "backend, fast step on",
                            "bench_meta_share.py --settings fisher:closed_form "
                            "fisher:cvxpylayers_dual --fisher-strides 5"),
}


def load(results: Path) -> dict[str, dict[str, Any]]:
    """Every known JSON present in ``results``, by file stem."""
    return {stem: json.loads((results / f"{stem}.json").read_text())
            for stem in SOURCES if (results / f"{stem}.json").exists()}


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (large numbers as integers)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def met(flag: Optional[bool]) -> str:
    return "–" if flag is None else ("**met**" if flag else "**missed**")


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return out + [""]


def machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    if isinstance(m, str):
        return m
    cpu = m.get("cpu", "?")
    return (f"{cpu}, {m.get('cpus', m.get('cpu_count', '?'))} CPUs"
            + (f", {m['mem_gib']} GiB" if m.get("mem_gib") else "")
            + f", {m.get('platform', '?')}, Python {m.get('python', '?')}"
            + (f"; load average {', '.join(f'{x:.1f}' for x in m['loadavg_1_5_15'])} "
               "(1, 5, 15 min) when written" if m.get("loadavg_1_5_15") else ""))


# -- sections -------------------------------------------------------------------------------
def sec_sampling(d: dict[str, Any], summary: list[list[str]], targets: bool = True
                 ) -> list[str]:
    target = d["target"]["ratio_min"]
    envs = d["config"].get("envs_per_runner", 1)
    rows = [[r["family"], r["runners"], r["raw_steps_per_s"], r["sampled_steps_per_s"],
             r["ratio"], met(r["meets_target"])] for r in d["rows"]]
    for r in d["rows"] if targets else []:
        summary.append([f"sampling ratio ≥ {target}", f"{r['family']}, R = {r['runners']}",
                        fmt(r["ratio"]), met(r["meets_target"])])
    return [f"Target: sampled ÷ (R × raw) ≥ {target}. Raw rate: {d['raw_rate']}. Sampled: env "
            f"steps per wall second of `MetaCPO.sample_episodes` (θ's weights sent with each "
            f"job), {d['config']['jobs_per_runner']} tasks per runner × "
            f"{d['config']['episodes']} episodes, {envs} sub-env(s) per runner, median of "
            f"{d['config']['repeats']} calls.", ""] \
        + table(["family", "R", "raw steps/s", "sampled steps/s", "ratio", "target"], rows)


def compare_sampling(base: dict[str, Any], vec: dict[str, Any]) -> list[str]:
    """Sampled steps/s with N sub-envs per runner against one sub-env (same family and R);
    only for two runs of the same commit (the sampler may have changed in between)."""
    if base.get("commit") != vec.get("commit"):
        return [f"(No speed-up table: `sampling.json` and `sampling_vector.json` come from "
                f"different commits, `{base.get('commit')}` and `{vec.get('commit')}`.)", ""]
    one = {(r["family"], r["runners"]): r["sampled_steps_per_s"] for r in base["rows"]}
    n = vec["config"].get("envs_per_runner", 1)
    rows = [[r["family"], r["runners"], one[(r["family"], r["runners"])],
             r["sampled_steps_per_s"], r["sampled_steps_per_s"] / one[(r["family"], r["runners"])]]
            for r in vec["rows"] if (r["family"], r["runners"]) in one]
    if not rows:
        return []
    return [f"Sampled steps/s, {n} sub-envs ({vec['config']['episodes']} episodes per task) "
            f"against 1 sub-env ({base['config']['episodes']} episodes per task) per EnvRunner; "
            "the two runs were taken minutes apart on a shared machine:", ""] \
        + table(["family", "R", "1 sub-env", f"{n} sub-envs", "speed-up"], rows)


def sec_lean(d: dict[str, Any], summary: list[list[str]]) -> list[str]:
    rows = [[r["family"], r["raw_steps_per_s"], r["lean_steps_per_s"], r["ratio"],
             r.get("sampler_steps_per_s"), r.get("sampler_ratio")] for r in d["rows"]]
    return ["One process, no Ray: the task env stepped by the (32, 16) GaussianMLP through a "
            "plain loop (torch forward per observation, actions sampled, log-probs kept, "
            "clipped copy to the env) and through the EnvRunners' rollout "
            "(`rollout.py`: numpy forward, whole episodes), against the random-policy "
            f"rate of the same env, median of {d['config']['repeats']} runs of "
            f"{d['config']['steps']} steps. Not a target: the per-EnvRunner bound of "
            "sampling without Ray.", ""] \
        + table(["family", "raw steps/s", "torch loop steps/s", "torch loop ÷ raw",
                 "rollout steps/s", "rollout ÷ raw"], rows)


def sec_meta_share(d: dict[str, Any], summary: list[list[str]]) -> list[str]:
    c, target = d["config"], d["target"]["learner_share_max"]
    rows = []
    for r in d["rows"]:
        stride = r.get("fisher_stride") or "–"
        setting = f"{r['metric']} / {r['backend']}" + (
            f", Fisher stride {stride}" if r.get("fisher_stride") else "")
        rows.append([r["metric"], r["backend"], stride, r["env_steps"], r["sample_s"],
                     r["learner_s"], r["wall_s"], pct(r["learner_share"]),
                     met(r["meets_target"])])
        summary.append([f"learner share ≤ {pct(target)}", setting,
                        pct(r["learner_share"]), met(r["meets_target"])])
    first = [[r["metric"], r["backend"], r.get("fisher_stride") or "–", it_i + 1,
              it["sample_s"], it["learner_s"], pct(it["learner_share"])]
             for r in d["rows"] for it_i, it in enumerate(r["iterations"])]
    threads = sorted({r["learner_torch_threads"] for r in d["rows"]
                      if "learner_torch_threads" in r})
    learner = (f" The Learner (in the driver process) ran with "
               f"{' / '.join(map(str, threads))} torch thread(s)." if threads else "")
    return [f"Target: learner ÷ (sampling + learner) ≤ {pct(target)} per meta-iteration, from "
            f"`algo.train()`'s own split (`results[\"metacpo\"][\"time\"]`). {c['family']}, "
            f"{c['tasks']} tasks, K = 1, policy (32, 16), {c['episodes']} episodes per task and "
            f"round, {c['runners']} EnvRunners, {c['iterations']} iterations per setting; the "
            f"table shows the mean after the first (warm-up) iteration. Fisher stride 5 is "
            f"`MetaCPOConfig`'s default (the Fisher metric on every 5th state); stride 1 uses "
            f"every state.{learner}", ""] \
        + table(["metric", "backend", "Fisher stride", "env steps", "sample s", "learner s",
                 "iteration s", "learner share", "target"], rows) \
        + ["Every iteration:", ""] \
        + table(["metric", "backend", "Fisher stride", "iteration", "sample s", "learner s",
                 "learner share"], first)


def sec_cpo_step(d: dict[str, Any], summary: list[list[str]], policy_n: Optional[int]
                 ) -> list[str]:
    rows = []
    for r in d["rows"]:
        for backend, res in r["backends"].items():
            rows.append([r["n"], backend, res["median_ms"], res.get("build_s"),
                         res.get("max_abs_dx_vs_closed_form"), res.get("speedup_vs_primal")])
    ns = [r["n"] for r in d["rows"] if "cvxpylayers_primal" in r["backends"]]
    lines = ["Target: `closed_form` and `cvxpylayers_dual` ≥ 50× faster than `cvxpylayers_primal` "
             "at the policy's n (forward + backward of one CPO step, Euclidean metric).", ""]
    if ns:
        ref = policy_n or ns[0]
        n = min(ns, key=lambda v: abs(v - ref))
        row = next(r for r in d["rows"] if r["n"] == n)
        lines += [f"Policy size n = {fmt(policy_n)} (from `update.json`); the nearest size "
                  f"measured is n = {n}.", ""]
        for backend in ("closed_form", "cvxpylayers_dual"):
            speed = row["backends"][backend].get("speedup_vs_primal")
            ok = None if speed is None else speed >= 50
            summary.append(["DCO step ≥ 50× faster than primal", f"{backend}, n = {n}",
                            f"{fmt(speed)}×", met(ok)])
    notes = [note for r in d["rows"] for note in r.get("notes", [])]
    return lines + table(["n", "backend", "median ms", "build s", "max abs dx vs closed form",
                          "speed-up vs primal"], rows) + [f"- {n}" for n in notes] + [""]


def sec_update(d: dict[str, Any], summary: list[list[str]]) -> list[str]:
    rows = []
    for r in d["rows"]:
        kept = r.get("exact_kept_solve_s")
        rows.append([r["metric"], r["n_params"], r["steps_per_batch"], 1e3 * r["exact_s"],
                     1e3 * r["first_order_s"], r["exact_over_first_order"],
                     None if kept is None else 1e3 * kept,
                     r.get("per_parameter_s"), r.get("per_parameter_over_exact"),
                     r.get("max_abs_diff")])
        ratio = r["exact_over_first_order"]
        summary.append(["exact meta-gradient ≤ 3× first-order", r["metric"], f"{fmt(ratio)}×",
                        met(ratio <= 3)])
        if "per_parameter_over_exact" in r:
            speed = r["per_parameter_over_exact"]
            summary.append(["exact meta-gradient ≥ 100× faster than per-parameter loop",
                            r["metric"], f"{fmt(speed)}×", met(speed >= 100)])
    return ["Targets: exact meta-gradient (through the inner CPO step) ≤ 3× a first-order step, "
            "and ≥ 100× faster than one backward pass per parameter. Best of "
            "the repeats, 1 torch thread, synthetic PointCircle-sized batches. Exact and "
            "first-order are timed on batches without a kept inner solve (each pays its inner "
            "steps in full); *exact, kept solve* is the exact gradient as the Learner computes "
            "it, replaying the support round's inner step from its kept Fisher solve (with the "
            "kept solve the first-order gradient needs no conjugate gradient at all).", ""] \
        + table(["metric", "n", "steps/batch", "exact ms", "first-order ms", "exact ÷ FO",
                 "exact, kept solve ms", "per-param s", "per-param ÷ exact", "max abs Δg"],
                rows)


def sec_scaling(d: dict[str, Any], summary: list[list[str]]) -> list[str]:
    c = d["config"]
    rows = [[r["runners"], r["wall_s"], r["sample_s"], r["learner_s"], r["sample_steps_per_s"],
             r["efficiency"], r["ideal_efficiency"]] for r in d["rows"]]
    return [f"{c['family']}, {c['tasks']} tasks × {c['episodes']} episodes, K = 1, "
            f"{c['metric']} / {c['backend']}; mean after the first iteration. Efficiency = "
            f"{d['efficiency_definition']} on the sampling part; *ideal* is the bound from "
            "round-robin task placement, T ÷ (R·⌈T/R⌉). R = 0 samples in the driver.", ""] \
        + table(["R", "iteration s", "sample s", "learner s", "sampled steps/s", "efficiency",
                 "ideal"], rows)


def sec_profile(d: dict[str, Any], summary: list[list[str]]) -> list[str]:
    c, steps = d["config"], d["env_steps"]
    rows = [[p["part"].replace("  ", "&nbsp;&nbsp;"), p["cumulative_s"], p["calls"],
             pct(p["share_of_iteration"]), 1e6 * p["cumulative_s"] / steps] for p in d["parts"]]
    top = [[f"`{r['function']}`", r["calls"], r["self_s"], r["cumulative_s"]]
           for r in d["top_self"][:15]]
    return [f"cProfile of one meta-iteration with the EnvRunner and the Learner in the driver "
            f"(R = 0): {c['family']}, {c['tasks']} tasks × {c['episodes']} episodes, K = 1, "
            f"{c['metric']} / {c['backend']}; {steps} env steps, "
            f"{fmt(d['profiled_wall_s'])} s under the profiler "
            f"({fmt(d['unprofiled']['wall_s'])} s without). Indented parts are inside the "
            "part above them.", ""] \
        + table(["part", "cumulative s", "calls", "share of iteration", "µs per env step"], rows) \
        + findings(d) + ["Heaviest functions by self time:", ""] \
        + table(["function", "calls", "self s", "cumulative s"], top)


def findings(d: dict[str, Any]) -> list[str]:
    """Sentences computed from the profile's parts (µs per env step, shares)."""
    parts = {p["part"].strip(): p["cumulative_s"] for p in d["parts"]}
    steps, total = d["env_steps"], d["profiled_wall_s"]
    us = {k: 1e6 * v / steps for k, v in parts.items()}
    sample = parts.get("runner rollout", 0.0)
    env, fwd = parts.get("task env step", 0.0), parts.get("policy forward", 0.0)
    learner = parts.get("learner add_round", 0.0) + parts.get("learner meta_step", 0.0)
    if not steps or not sample:
        return []
    rest = sample - env - fwd
    small = sum(parts.get(k, 0.0) for k in ("runner.set_state (weights)",
                                            "episode arrays (EpisodeData)",
                                            "sync_weights")) < 0.01 * sample
    return [
        f"Findings (computed from the parts above; cProfile slows Python-heavy code, here "
        f"{fmt(total / d['unprofiled']['wall_s'])}× in all, so shares are indicative):", "",
        f"- Sampling is {pct(sample / total)} of the profiled iteration, the Learner "
        f"{pct(learner / total)}.",
        f"- Per env step the EnvRunner's rollout spends {fmt(us.get('runner rollout'))} µs: "
        f"the task env {fmt(us.get('task env step'))} µs ({pct(env / sample)}; MuJoCo's "
        f"`mj_step` itself {fmt(us.get('mujoco mj_step'))} µs), the policy forward (numpy, "
        f"one batched call per step) {fmt(us.get('policy forward'))} µs ({pct(fwd / sample)}), "
        f"the rest (noise, clipping, per-step bookkeeping, loop) {fmt(1e6 * rest / steps)} µs "
        f"({pct(rest / sample)}).",
        f"- Weight pushes (`runner.set_state`) {fmt(us.get('runner.set_state (weights)'))} µs, "
        f"episode arrays (`EpisodeData`) {fmt(us.get('episode arrays (EpisodeData)'))} µs and "
        f"the θ broadcast (`sync_weights`) {fmt(us.get('sync_weights'))} µs per env step"
        + (": negligible." if small else "."), ""]


def sec_envs(d: dict[str, Any], summary: list[list[str]]) -> list[str]:
    rows = [[r["family"], r["bare_env_id"], r["steps_per_s"]["bare"],
             r["steps_per_s"]["bare_layout"], r["steps_per_s"]["layer"],
             r["steps_per_s"]["layer_full_world"], r["ratio_layer_vs_bare"]] for r in d["results"]]
    return ["Random-policy steps per wall second, single process (median of "
            f"{d['config']['repeats']} runs); the task layer skips the skybox (lean world).", ""] \
        + table(["family", "bare env", "bare", "bare, task layout", "task layer",
                 "task layer, full world", "layer ÷ bare (CPU time)"], rows)


def sec_fast_step(d: dict[str, Any], summary: list[list[str]]) -> list[str]:
    target, stretch = d["targets"]["ratio"], d["targets"]["stretch"]
    rows = []
    for r in d["env"]:
        us = r["us_per_step"]
        rows.append([r["family"], us["stock"], us["fast"], us["physics"], r["ratio_stock"],
                     r["ratio_fast"], r["speedup"]])
        summary.append([f"fast step ≥ {target} of bare physics (stretch {stretch})",
                        r["family"], fmt(r["ratio_fast"]),
                        met(r["met"]) + (" (stretch met)" if r["stretch_met"] else "")])
    lines = [f"Random-action steps of the TaskEnv, CPU time of one process, median of "
             f"{d['config']['rounds']} alternating rounds of {d['config']['steps']} steps "
             "(resets at episode ends included); physics = `mj_step(model, data, nstep=10)` "
             "on the same model. Ratio = physics ÷ step time.", ""]
    lines += table(["family", "stock µs/step", "fast µs/step", "physics µs/step",
                    "stock ÷ physics", "fast ÷ physics", "speed-up"], rows)
    if d.get("train"):
        trows = []
        for r in d["train"]:
            sps = r["env_steps_per_s"]
            trows.append([r["family"], sps["stock"], sps["fast"], r["speedup"]])
            summary.append([f"algo.train() throughput ≥ {r['target']}× with fast_step",
                            r["family"], f"{fmt(r['speedup'])}×", met(r["met"])])
        lines += ["", "End-to-end `algo.train()` (Meta-CPO, default config, 2 EnvRunners), env "
                  "steps per wall second, median over alternating iterations:", ""]
        lines += table(["family", "stock steps/s", "fast steps/s", "speed-up"], trows)
    c = d["dco"]
    summary.append([f"batched DCO round ≤ {c['target']}× one unbatched call",
                    f"{c['tasks']} tasks", f"{fmt(c['batched_vs_single'])}×", met(c["met"])])
    lines += ["", f"cvxpylayers dual layer, forward + backward, {c['tasks']} instances of "
              f"cases 1–2 (median of {c['repeats']}):", ""]
    lines += table(["one call, 1 instance (s)", "one call per instance (s)",
                    "one batched call (s)", "batched ÷ single", "unbatched ÷ batched"],
                   [[c["single_call_s"], c["unbatched_round_s"], c["batched_round_s"],
                     c["batched_vs_single"], c["unbatched_vs_batched"]]])
    return lines + [""]


SECTIONS: dict[str, Callable[..., list[str]]] = {
    "sampling": sec_sampling,
    "sampling_vector": lambda d, summary: sec_sampling(d, summary, targets=False),
    "lean_rollout": sec_lean, "meta_share": sec_meta_share, "cpo_step": sec_cpo_step,
    "update": sec_update, "scaling": sec_scaling, "profile": sec_profile, "envs": sec_envs,
    "fast_step": sec_fast_step, "meta_share_backends": sec_meta_share,
}


def render(data: dict[str, dict[str, Any]]) -> str:
    """The Markdown page for the loaded JSON."""
    summary: list[list[str]] = []
    policy_n = next((r["n_params"] for r in data.get("update", {}).get("rows", [])), None)
    body: list[str] = []
    for stem, (title, script) in SOURCES.items():
        if stem not in data:
            body += [f"## {title}", "", f"*No results: run `benchmarks/{script}`.*", ""]
            continue
        d = data[stem]
        fn = SECTIONS[stem]
        lines = fn(d, summary, policy_n) if stem == "cpo_step" else fn(d, summary)
        if stem == "sampling_vector" and "sampling" in data:
            lines += compare_sampling(data["sampling"], d)
        body += [f"## {title}", "",
                 f"`benchmarks/{script}` → `benchmarks/results/{stem}.json`; commit "
                 f"`{d.get('commit', 'not recorded')}`"
                 + (f", {d['utc']}" if d.get("utc") else "") + ".", ""] + lines
    prov = [[f"`{stem}.json`", f"`{d.get('commit', 'not recorded')}`", d.get("utc", "–"),
             machine_line(d)] for stem, d in data.items()]
    head = ["# Benchmarks", "",
            "Generated by `benchmarks/report.py` from `benchmarks/results/*.json` "
            "(`make bench` runs every benchmark and regenerates this page); do not edit by "
            "hand. A commit marked `+dirty` had uncommitted changes under `metacpo_rllib/`.", "",
            "## Where and when", ""] \
        + table(["results", "commit", "UTC", "machine"], prov) \
        + ["## Targets", ""] + table(["target", "setting", "measured", "status"], summary)
    return "\n".join(head + body).rstrip() + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    text = render(load(args.results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return text


if __name__ == "__main__":
    main()
