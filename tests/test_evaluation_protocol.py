"""The evaluation protocol on PointNav: evaluation episodes apart from the learning batches (own
seeds, common random numbers, reproducible), the calibration ledger, training evaluation, and
the CLI / MLflow / comparison plumbing of the evaluation figures."""
from __future__ import annotations

import math

import numpy as np
import pytest

from metacpo_rllib.rllib.episodes import episode_streams, evaluation_seed

pytestmark = pytest.mark.usefixtures("ray_local")

STEPS, EVAL_EPISODES, BATCH_EPISODES = 2, 5, 3


def _config(cls_name: str = "MetaCPOConfig", runners: int = 0, seed: int = 0):
    import metacpo_rllib.rllib as rl

    return (getattr(rl, cls_name)().environment("PointNav")
            .env_runners(num_env_runners=runners)
            .training(tasks_per_iteration=2, episodes_per_task=BATCH_EPISODES,
                      adaptation_episodes_per_task=BATCH_EPISODES, seed=seed))


def _recording(algo):
    """Record every sampling job the algorithm sends (and what came back)."""
    calls = []
    original = algo._run_jobs

    def run_jobs(jobs):
        results = original(jobs)
        calls.append((list(jobs), results))
        return results

    algo._run_jobs = run_jobs
    return calls


@pytest.fixture(scope="module")
def adapted():
    """One Meta-CPO algorithm with one remote EnvRunner, adapted to 2 tight PointNav tasks."""
    algo = _config(runners=1).build_algo()
    calls = _recording(algo)
    tasks = algo.family.sample_tasks(2, "test_tight", seed=4)
    report = algo.adapt(tasks, steps=STEPS, eval_episodes=EVAL_EPISODES, deterministic=True)
    yield algo, tasks, report, calls
    algo.stop()


def test_seed_domains_are_disjoint():
    learn = {s for seed in range(50) for s, _ in episode_streams(8, seed)}
    task = {"task_id": 3, "params": {"a": 1.0}}
    evals = {s for e in range(50) for s, _ in episode_streams(8, evaluation_seed(e, task))}
    assert max(learn) < 2**31 <= min(evals) < max(evals) < 2**32
    # the noise of an evaluation episode is not that of the learning episode with its index
    (_, rng_l), (_, rng_e) = episode_streams(1, 0)[0], episode_streams(1, evaluation_seed(0, task))[0]
    assert not np.allclose(rng_l.standard_normal(4), rng_e.standard_normal(4))
    # the task's identity (not its cost limit) picks the stream
    other = evaluation_seed(0, {"task_id": 3, "params": {"a": 2.0}})
    assert other != evaluation_seed(0, task)
    assert evaluation_seed(0, {**task, "cost_limit": 1.0}) == evaluation_seed(0, task)


def test_eval_episodes_never_share_seeds_with_batches(adapted):
    algo, tasks, report, calls = adapted
    assert len(calls) == STEPS + 1                    # batches and evaluation sent together
    learn_seeds, eval_seeds = set(), {}
    for jobs, results in calls:
        for job in jobs:
            result = results[job.job]
            assert result.task == job.task and result.mode == job.mode
            if job.evaluation:
                key = (job.task.task_id, job.deterministic)
                assert len(result.evaluation["reset_seeds"]) == EVAL_EPISODES
                eval_seeds.setdefault(key, []).append(tuple(result.evaluation["reset_seeds"]))
                assert not result.episodes            # only summaries come back
            else:
                learn_seeds |= {s for s, _ in episode_streams(job.num_episodes, job.seed)}
                assert len(result.episodes) == BATCH_EPISODES
    assert len(learn_seeds) == (STEPS + 1) * len(tasks) * BATCH_EPISODES
    all_eval = {s for runs in eval_seeds.values() for run in runs for s in run}
    assert not learn_seeds & all_eval
    # common random numbers: each task meets the same evaluation seeds at every step
    assert len(eval_seeds) == 2 * len(tasks)
    for runs in eval_seeds.values():
        assert len(runs) == STEPS + 1 and len(set(runs)) == 1


def test_report_carries_both_measurements(adapted):
    algo, tasks, report, _ = adapted
    assert report["batch_episodes"] == BATCH_EPISODES
    for task in report["tasks"]:
        assert len(task["return"]) == len(task["cost"]) == STEPS + 1    # learning batches
        ev = task["eval"]
        for key in ("return", "cost", "cost_se", "cost_ucb", "within_limit", "certified"):
            assert len(ev[key]) == STEPS + 1
        assert ev["num_episodes"] == [EVAL_EPISODES] * (STEPS + 1)
        assert ev["cost_bound"] == algo.family.horizon       # 0/1 step costs, 60 steps
        for s in range(STEPS + 1):
            costs = np.array(ev["episode_cost"][s])
            assert ev["cost"][s] == pytest.approx(costs.mean())
            assert ev["cost_ucb"][s] >= ev["cost"][s]
            assert ev["within_limit"][s] == (ev["cost"][s] <= task["cost_limit"])
            assert ev["certified"][s] == (ev["cost_ucb"][s] <= task["cost_limit"])
        assert task["eval_mean_action"]["cost"] != ev["cost"] or \
            task["eval_mean_action"]["return"] != ev["return"]
    means = report["eval"]
    assert means["episodes_per_task"] == EVAL_EPISODES and not means["deterministic"]
    assert report["eval_mean_action"]["deterministic"]
    assert means["mean_cost"][0] == pytest.approx(
        np.mean([t["eval"]["cost"][0] for t in report["tasks"]]))
    assert report["time_s"]["eval_env_steps"] == 2 * (STEPS + 1) * len(tasks) * EVAL_EPISODES \
        * algo.family.horizon


def test_ledger_pairs_prediction_and_realised_change(adapted):
    _, tasks, report, _ = adapted
    for task in report["tasks"]:
        ledger = task["ledger"]
        assert [e["step"] for e in ledger] == list(range(STEPS))
        for e in ledger:
            s = e["step"]
            costs = task["eval"]["episode_cost"]
            assert e["realised_cost_change"] == pytest.approx(
                np.mean(costs[s + 1]) - np.mean(costs[s]))
            assert e["batch_cost_change"] == pytest.approx(task["cost"][s + 1] - task["cost"][s])
            assert math.isfinite(e["predicted_cost_change"])   # Meta-CPO: a cost model
            assert e["kl"] >= 0 and e["case"] in (0.0, 1.0, 2.0, 3.0, 4.0)
            if e["kl"] == 0:  # no step (a pooled c > 0 without a cost gradient): no change
                assert e["predicted_cost_change"] == 0
    assert any(e["kl"] > 0 for task in report["tasks"] for e in task["ledger"])


def test_same_seeds_reproduce_the_evaluation(adapted):
    """A second algorithm built from the same config, sampling locally instead of on a remote
    runner, reproduces the whole report; another eval seed gives other episodes."""
    _, tasks, report, _ = adapted
    algo = _config(runners=0).build_algo()
    try:
        again = algo.adapt(tasks, steps=STEPS, eval_episodes=EVAL_EPISODES, deterministic=True)
        for a, b in zip(report["tasks"], again["tasks"]):
            assert a["eval"]["episode_cost"] == b["eval"]["episode_cost"]
            np.testing.assert_allclose(a["eval"]["episode_return"], b["eval"]["episode_return"])
            assert a["cost"] == b["cost"]
        other = algo.adapt(tasks, steps=0, eval_episodes=EVAL_EPISODES, eval_seed=1)
        assert other["tasks"][0]["eval"]["episode_return"][0] != \
            again["tasks"][0]["eval"]["episode_return"][0]
        off = algo.adapt(tasks, steps=1, eval_episodes=0)
        assert "eval" not in off and "eval" not in off["tasks"][0]
        with pytest.raises(ValueError, match="eval_episodes"):
            algo.adapt(tasks, steps=1, eval_episodes=-1)
    finally:
        algo.stop()


def test_unconstrained_steps_predict_no_cost_change():
    algo = _config("TRPOConfig").build_algo()
    try:
        tasks = algo.family.sample_tasks(1, "test", seed=0)
        report = algo.adapt(tasks, steps=1, eval_episodes=3)
        (entry,) = report["tasks"][0]["ledger"]
        assert math.isnan(entry["predicted_cost_change"])     # TRPO has no cost model
        assert entry["case"] == 4.0 and entry["kl"] > 0
        assert math.isfinite(entry["realised_cost_change"])
    finally:
        algo.stop()


def test_training_evaluation_leaves_training_unchanged():
    """θ is evaluated every iteration under ``evaluation``; the training numbers are those of
    the same run without evaluation (evaluation draws from no training RNG)."""
    plain = _config(seed=3).build_algo()
    evaluated = _config(seed=3).evaluation(
        evaluation_interval=1, evaluation_duration=4, evaluation_num_tasks=2).build_algo()
    try:
        r_plain, r_eval = plain.train(), evaluated.train()
        assert "evaluation" not in r_plain or not r_plain["evaluation"].get("mean_cost")
        ev = r_eval["evaluation"]
        assert r_eval["metacpo"]["post_cost_mean"] == r_plain["metacpo"]["post_cost_mean"]
        assert r_eval["metacpo"]["pre_return_mean"] == r_plain["metacpo"]["pre_return_mean"]
        assert ev["num_tasks"] == 2 and ev["episodes_per_task"] == 4
        assert ev["cost_limit"] == 10.0
        assert ev["mean_cost"] == pytest.approx(np.mean(ev["per_task"]["cost"]))
        assert ev["meets_limit"] == float(ev["mean_cost"] <= ev["cost_limit"])
        assert ev["certified"] == float(ev["cost_ucb"] <= ev["cost_limit"])
        assert ev["cost_ucb"] >= ev["mean_cost"]
        assert ev["env_steps"] == 2 * 4 * evaluated.family.horizon
        assert [t.task_id for t in evaluated.evaluation_tasks()] == ev["per_task"]["task_id"]
        # the evaluation episodes are not counted as sampled training steps
        assert r_eval["num_env_steps_sampled_lifetime"] == r_plain["num_env_steps_sampled_lifetime"]
        from metacpo_rllib.experiments.tracking import result_metrics

        metrics = result_metrics(r_eval)
        assert metrics["evaluation/mean_cost"] == ev["mean_cost"]
        assert "evaluation/meets_limit" in metrics and "evaluation/per_task/cost" not in metrics
    finally:
        plain.stop()
        evaluated.stop()


def test_evaluation_config_is_validated():
    with pytest.raises(ValueError, match="evaluation_duration"):
        _config().evaluation(evaluation_interval=1, evaluation_duration="auto").validate()
    with pytest.raises(ValueError, match="evaluation_num_tasks"):
        _config().evaluation(evaluation_num_tasks=0).validate()


def test_mlflow_gets_evaluation_per_adaptation_step(adapted, tmp_path, monkeypatch):
    """Real MLflow (sqlite store): the evaluation means are logged with the adaptation step
    as the metric's step, beside the learning-batch ones."""
    from mlflow.tracking import MlflowClient

    from metacpo_rllib.experiments import tracking

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = tracking.ensure_experiment(client, "eval-test", uri)
    run_id = client.create_run(experiment).info.run_id
    recorder = tracking.RunRecorder(client, run_id, tracking.Guard(uri))
    report = adapted[2]
    recorder.log_adaptation(report)
    history = client.get_metric_history(run_id, "test/eval_cost_mean")
    assert sorted(m.step for m in history) == list(range(STEPS + 1))
    assert {m.step: m.value for m in history} == pytest.approx(
        dict(enumerate(report["eval"]["mean_cost"])))
    for name in ("test/eval_certified_rate", "test/eval_within_limit_rate", "test/cost_mean"):
        assert len(client.get_metric_history(run_id, name)) == STEPS + 1


def test_cli_and_compare_expose_eval_episodes():
    from metacpo_rllib.cli import build_parser
    from metacpo_rllib.experiments.commands import compare_spec_from_args

    parser = build_parser()
    args = parser.parse_args(["adapt", "--checkpoint", "/tmp", "--split", "test_tight",
                              "--eval-episodes", "7"])
    assert args.eval_episodes == 7 and args.split == "test_tight"
    assert parser.parse_args(["adapt", "--checkpoint", "/tmp"]).eval_episodes == 20
    args = parser.parse_args(["compare", "--family", "PointNav", "--eval-episodes", "0"])
    assert compare_spec_from_args(args).adaptation.eval_episodes == 0
    args = parser.parse_args(["compare", "--family", "PointNav"])
    assert compare_spec_from_args(args).adaptation.eval_episodes == 20


def test_tables_and_comparison_summary(adapted):
    from metacpo_rllib.cli import adaptation_table
    from metacpo_rllib.experiments.compare import markdown_report, summarize
    from metacpo_rllib.experiments.spec import Adaptation, SweepSpec

    report = adapted[2]
    text = adaptation_table(report)
    assert "learning batches (3 episodes" in text and "evaluation (5 episodes" in text
    assert "certified" in text.splitlines()[-2]
    assert text.splitlines()[-1].startswith("verdict: ")
    row = {"seed": 0, "train_limit": 10.0, "test_limit": 5.0,
           "adapt": {k: report[k] for k in ("steps", "mean_return", "mean_cost",
                                            "violation_rate")}}
    row["adapt"].update(eval=report["eval"], ledger=[
        {**e, "task_id": t["task_id"]} for t in report["tasks"] for e in t["ledger"]])
    summary = summarize({"MetaCPO": [row]})["MetaCPO"]
    assert summary["eval_cost"]["mean"] == report["eval"]["mean_cost"][-1]
    assert math.isnan(summary["eval_cost"]["std"])             # one seed: no spread
    assert summary["calibration"]["all"]["n"] == STEPS * len(report["tasks"])
    spec = SweepSpec(name="x", algorithms=["MetaCPO"], family="PointNav", iterations=1,
                     grid={"seed": [0]}, adaptation=Adaptation(eval_episodes=5))
    md = markdown_report(spec, {"MetaCPO": [row]}, {"MetaCPO": summary})
    assert "certified" in md and "Calibration of the cost model: MetaCPO" in md
    assert "±" not in md.split("## Per seed")[0].split("| MetaCPO |")[1].splitlines()[0]


def test_training_ledger_for_cpo():
    """CPO evaluated every iteration: from the second evaluation on, the update between two
    evaluations is in the ledger, its realised change the change of θ's evaluation cost."""
    algo = _config("CPOConfig", seed=1).evaluation(
        evaluation_interval=1, evaluation_duration=4, evaluation_num_tasks=2).build_algo()
    try:
        first, second = algo.train(), algo.train()
        assert "ledger" not in first["evaluation"]
        ledger = second["evaluation"]["ledger"]
        update = second["metacpo"]["update"]
        assert ledger["predicted_cost_change"] == update["outer_predicted_cost_change"]
        assert ledger["case"] == update["outer_case"] and ledger["kl"] == update["outer_kl"]
        assert ledger["realised_cost_change"] == pytest.approx(
            second["evaluation"]["mean_cost"] - first["evaluation"]["mean_cost"])
    finally:
        algo.stop()
