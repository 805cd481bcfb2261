"""research/safety_ablation.py end to end on a tiny PointNav run (real Ray, real rollouts),
then its Markdown report; an interrupted sweep resumes without redoing finished runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metacpo_rllib.rllib.config import MetaCPOConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_ablation_writes_every_run_and_its_report(tmp_path) -> None:
    out = tmp_path / "ablation.json"
    command = [sys.executable, str(REPO / "research" / "safety_ablation.py"),
               "--family", "PointNav", "--iterations", "1", "--variants", "baseline", "all",
               "--algos", "cpo", "--seeds", "0", "--test-tasks", "2", "--adapt-steps", "1",
               "--eval-episodes", "3", "--train-eval-episodes", "2", "--train-eval-tasks", "2",
               "--episodes-per-task", "2", "--tasks-per-iteration", "2", "--out", str(out)]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, timeout=600)
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"baseline/cpo/seed0", "all/cpo/seed0"}
    assert not any(runs["baseline/cpo/seed0"]["flags"].values())  # whatever the defaults
    flags = runs["all/cpo/seed0"]["flags"]
    assert {f for f, on in flags.items() if on} == {
        "cost_signal_share", "cost_upper_bound", "recover_when_violating"}
    for run in runs.values():
        for split in ("test", "test_tight"):
            adaptation = run["adaptation"][split]
            assert len(adaptation["eval_cost"]) == 2  # steps 0 and 1
            assert all(0.0 <= share <= 1.0 for share in adaptation["within_limit"])
            # the per-task figures are what the step means are taken over
            per_task = adaptation["task_eval_cost"]
            assert len(per_task) == 2 and all(len(costs) == 2 for costs in per_task)
            assert adaptation["eval_cost"] == pytest.approx(
                [sum(costs) / 2 for costs in zip(*per_task)])
            assert len(adaptation["task_batch_cost"]) == 2
    # resumed: nothing left to run, the file is kept as it was
    before = out.read_text()
    done = subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert "baseline/cpo" not in done.stdout and out.read_text() == before
    page = tmp_path / "ablation.md"
    subprocess.run([sys.executable, str(REPO / "research" / "ablation_report.py"), str(out),
                    "--out", str(page)], check=True, timeout=120)
    text = page.read_text()
    assert "| baseline | cpo | 1 |" in text and "| all | cpo | 1 |" in text
    assert "Adaptation on `test_tight`" in text
    # every mean cost has an upper bound beside it: θ's 95% UCB in training, the certified
    # share per adaptation step (one value per step 0..1, each a share in [0, 1])
    assert "train eval cost 95% UCB" in text and "certified per step" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| all | cpo")]
    assert len(rows) == 3 and all(len(row) == 7 for row in rows[1:])
    for row in rows[1:]:
        certified = [float(share.split(" ")[0]) for share in row[5].split(" → ")]
        assert len(certified) == 2 and all(0.0 <= share <= 1.0 for share in certified)


def test_adaptation_settings_reuse_one_trained_policy(tmp_path) -> None:
    """Each --adapt-settings entry adapts the θ kept under --checkpoints: restored, it adapts
    exactly as right after training; another radius changes the adaptation."""
    checkpoints = tmp_path / "ckpt"

    def run(out: Path, *settings: str) -> dict:
        subprocess.run(
            [sys.executable, str(REPO / "research" / "safety_ablation.py"), "--family",
             "PointNav", "--iterations", "1", "--variants", "all", "--algos", "meta-cpo",
             "--seeds", "0", "--test-tasks", "2", "--adapt-steps", "2", "--eval-episodes",
             "3", "--splits", "test_tight", "--train-eval-interval", "0",
             "--episodes-per-task", "2", "--tasks-per-iteration", "2", "--checkpoints",
             str(checkpoints), "--adapt-settings", *settings, "--out", str(out)],
            check=True, cwd=tmp_path, capture_output=True, timeout=600)
        return json.loads(out.read_text())["runs"]

    trained = run(tmp_path / "a.json", "default")
    assert (checkpoints / "all-meta-cpo-seed0-it1-t2-e2" / "training.json").exists()
    restored = run(tmp_path / "b.json", "default", "ad0.05", "win8", "eps3")
    assert set(restored) == {"all/meta-cpo/seed0", "all/meta-cpo/seed0/ad0.05",
                             "all/meta-cpo/seed0/win8", "all/meta-cpo/seed0/eps3"}
    first, again = trained["all/meta-cpo/seed0"], restored["all/meta-cpo/seed0"]
    assert again["adaptation"] == first["adaptation"]
    assert again["training"] == first["training"]
    wider = restored["all/meta-cpo/seed0/ad0.05"]
    assert wider["adaptation_fields"] == {"adaptation_delta": 0.05}
    assert wider["adaptation"]["test_tight"]["batch_cost"][1:] != \
        first["adaptation"]["test_tight"]["batch_cost"][1:]
    # eps3: three episodes per task (2 tasks) in every adaptation batch instead of the
    # config's default
    default = MetaCPOConfig().adaptation_episodes_per_task
    assert first["adaptation"]["test_tight"]["batch_episodes"] == [2 * default] * 3
    larger = restored["all/meta-cpo/seed0/eps3"]
    assert (larger["adaptation_fields"], larger["adaptation_episodes"]) == (
        {"adaptation_episodes_per_task": 3}, 3)
    assert larger["adaptation"]["test_tight"]["batch_episodes"] == [2 * 3] * 3


def test_continue_from_a_shorter_run_matches_the_uninterrupted_run(tmp_path) -> None:
    """--continue-from 1 restores the 1-iteration θ and trains one more iteration: the
    training rows and the adaptation equal those of a 2-iteration run from scratch. With
    --continue-env-config the second iteration runs on other tasks (a curriculum), and with
    --continue-from equal to --iterations θ is only adapted there."""

    def run(name: str, *extra: str) -> dict:
        out = tmp_path / f"{name}.json"
        subprocess.run(
            [sys.executable, str(REPO / "research" / "safety_ablation.py"), "--family",
             "PointNav", "--variants", "all", "--algos", "meta-cpo", "--seeds", "0",
             "--test-tasks", "2", "--adapt-steps", "1", "--eval-episodes", "3", "--splits",
             "test", "--train-eval-interval", "0", "--episodes-per-task", "2",
             "--tasks-per-iteration", "2", *extra, "--out", str(out)],
            check=True, cwd=tmp_path, capture_output=True, timeout=600)
        return json.loads(out.read_text())["runs"]["all/meta-cpo/seed0"]

    ckpt = str(tmp_path / "ckpt")
    run("one", "--iterations", "1", "--checkpoints", ckpt)
    continued = run("continued", "--iterations", "2", "--continue-from", "1",
                    "--checkpoints", ckpt)
    straight = run("straight", "--iterations", "2")
    assert continued["continued_from"].endswith("all-meta-cpo-seed0-it1-t2-e2")
    assert straight["continued_from"] is None
    assert [r["iteration"] for r in continued["training"]] == [1, 2]
    assert continued["training"] == straight["training"]
    assert continued["adaptation"] == straight["adaptation"]
    # kept for 2 iterations, it says where it came from when restored again
    again = run("again", "--iterations", "2", "--checkpoints", ckpt)
    assert again["continued_from"] == continued["continued_from"]
    # a curriculum: the 1-iteration θ of the family's own tasks goes on with faster points;
    # its first iteration is the shorter run's, its second differs from the straight run's
    faster = json.dumps({"max_speed": 0.08})
    curriculum = run("curriculum", "--iterations", "2", "--continue-from", "1",
                     "--continue-env-config", "{}", "--env-config", faster,
                     "--checkpoints", ckpt)
    assert curriculum["continued_from"] == continued["continued_from"]
    assert curriculum["env_config"]["max_speed"] == 0.08
    assert curriculum["training"][0] == straight["training"][0]
    assert curriculum["training"][1] != straight["training"][1]
    # M = N: the 1-iteration θ of the family's own tasks, adapted with faster points
    moved = run("moved", "--iterations", "1", "--continue-from", "1",
                "--continue-env-config", "{}", "--env-config", faster, "--checkpoints", ckpt)
    one = json.loads((tmp_path / "one.json").read_text())["runs"]["all/meta-cpo/seed0"]
    assert moved["continued_from"].endswith("all-meta-cpo-seed0-it1-t2-e2")
    assert moved["env_config"]["max_speed"] == 0.08 and moved["training"] == one["training"]
    assert moved["adaptation"] != one["adaptation"]
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert len(kept) == 4 and kept[0] == "all-meta-cpo-seed0-it1-t2-e2"
    assert kept[1].startswith("all-meta-cpo-seed0-it1-t2-e2-")
    assert kept[1].endswith("-after1-default")
    assert kept[2] == "all-meta-cpo-seed0-it2-t2-e2" and kept[3].endswith("-after1-default")
    for flags, field in ((["--continue-from", "2"], "--continue-from 2"),
                         (["--continue-from", "3", "--continue-env-config", "{}"],
                          "--continue-from 3"),
                         (["--continue-env-config", "{}"], "--continue-env-config")):
        bad = subprocess.run(
            [sys.executable, str(REPO / "research" / "safety_ablation.py"), "--iterations",
             "2", *flags, "--checkpoints", ckpt, "--out", str(tmp_path / "x.json")],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and field in bad.stderr


def test_adapt_setting_names_parse_into_fields_and_batch_size() -> None:
    from research.safety_ablation import adapt_setting, adaptation_fields

    name = "win64+free0.25+rec6+mar1+ad0.003+bt2+ucb1+fresh1+lim0.5+eps16+first64"
    assert adaptation_fields(name) == {
        "adaptation_cost_window": 64, "adaptation_cost_free_scale": 0.25,
        "adaptation_recovery_scale": 6.0, "adaptation_cost_margin_rate": 1.0,
        "adaptation_delta": 0.003, "adaptation_backtracks": 2, "adaptation_limit_margin": 0.5,
        "adaptation_backtrack_bound": True, "adaptation_backtrack_fresh": True,
        "adaptation_episodes_per_task": 16, "adaptation_first_episodes_per_task": 64}
    assert adaptation_fields("default") == {}
    for bad in ("eps0", "eps2.5", "first0", "first1.5", "win1.5", "win-1", "bt1.5", "ucb2",
                "ucb0.5", "fresh2", "ad", "foo", "win8+bar3"):
        with pytest.raises(Exception, match="adapt setting"):
            adapt_setting(bad)


def test_run_label_names_the_adaptation_batch_where_recorded() -> None:
    from research.ablation_report import run_label

    assert run_label({"variant": "all"}) == "all"
    assert run_label({"variant": "all", "adapt_setting": "win8",
                      "adaptation_episodes": None}) == "all + win8"
    assert run_label({"variant": "all", "adapt_setting": "win8",
                      "adaptation_episodes": 16}) == "all + win8+eps16"
    assert run_label({"variant": "all", "adapt_setting": "default",
                      "adaptation_episodes": 16}) == "all"
    assert run_label({"variant": "all", "adapt_setting": "eps3",
                      "adaptation_episodes": 3}) == "all + eps3"


def test_train_cost_limit_sets_training_limit_only(tmp_path) -> None:
    """--train-cost-limit is every training task's limit (θ's training evaluation uses it)
    and names the checkpoint folder, as --trust-region-delta, the batch flags and
    --env-config (family overrides) do; adaptation keeps the family's test limit."""
    from metacpo_rllib.rllib import ALGO_CONFIGS

    out, checkpoints = tmp_path / "h3.json", tmp_path / "ckpt"
    subprocess.run(
        [sys.executable, str(REPO / "research" / "safety_ablation.py"), "--family", "PointNav",
         "--iterations", "1", "--variants", "all", "--algos", "cpo", "--seeds", "0",
         "--test-tasks", "1", "--adapt-steps", "1", "--eval-episodes", "2", "--splits",
         "test_tight", "--train-eval-interval", "1", "--train-eval-episodes", "2",
         "--train-eval-tasks", "1", "--episodes-per-task", "2", "--tasks-per-iteration", "2",
         "--train-cost-limit", "3", "--env-config", '{"horizon": 30}',
         "--trust-region-delta", "0.02",
         "--checkpoints", str(checkpoints), "--out", str(out)],
        check=True, cwd=tmp_path, capture_output=True, timeout=600)
    results = json.loads(out.read_text())
    run = results["runs"]["all/cpo/seed0"]
    assert run["final_train_eval"]["cost_limit"] == 3.0
    assert results["settings"]["env_config"] == {"horizon": 30}
    saved = list(checkpoints.glob("all-cpo-seed0-it1-h3-tr0.02-t2-e2-env*/training.json"))
    assert len(saved) == 1
    # what the trained algorithm's config held
    assert (run["env_config"], run["trust_region_delta"]) == ({"horizon": 30}, 0.02)
    family = ALGO_CONFIGS["cpo"]().environment("PointNav").make_family()
    test_limit = family.sample_tasks(1, "test_tight", seed=12345)[0].cost_limit
    assert test_limit != 3.0
    assert run["adaptation"]["test_tight"]["cost_limit"] == test_limit


def _result(command: str, seeds, variants, runs, adapt_settings=("default",)) -> dict:
    return {"settings": {"seeds": seeds, "variants": variants, "algos": ["cpo"],
                         "adapt_settings": list(adapt_settings), "commands": [command]},
            "runs": {k: {"training": [{"iteration": 1, "batch_cost": v}],
                         "final_train_eval": None} for k, v in runs.items()}}


def test_merge_unions_runs_and_refuses_a_run_that_differs(tmp_path) -> None:
    """--merge: the union of runs, seeds, variants, adaptation settings and commands; a
    baseline present in both files with the same training is kept once; the same key with
    other data is refused."""
    sys.path.insert(0, str(REPO / "research"))
    try:
        import safety_ablation
    finally:
        sys.path.remove(str(REPO / "research"))
    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    a.write_text(json.dumps(_result("cmd a", [0, 1], ["all", "x"],
                                    {"all/cpo/seed0": 1.0, "x/cpo/seed0": 2.0})))
    b.write_text(json.dumps(_result("cmd b", [1, 2], ["all", "y"],
                                    {"all/cpo/seed0": 1.0, "y/cpo/seed2": 3.0},
                                    ["default", "mar1"])))
    c.write_text(json.dumps(_result("cmd c", [0], ["all"], {"all/cpo/seed0": 9.0})))
    out = tmp_path / "merged.json"
    assert safety_ablation.main(["--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert set(merged["runs"]) == {"all/cpo/seed0", "x/cpo/seed0", "y/cpo/seed2"}
    assert merged["settings"]["seeds"] == [0, 1, 2]
    assert merged["settings"]["variants"] == ["all", "x", "y"]
    assert merged["settings"]["adapt_settings"] == ["default", "mar1"]
    assert merged["settings"]["commands"] == ["cmd a", "cmd b"]
    assert [m["file"] for m in merged["settings"]["merged_from"]] == ["a.json", "b.json"]
    with pytest.raises(ValueError, match="all/cpo/seed0 differs"):
        safety_ablation.merge([a, c], out)


def test_merge_adds_the_splits_of_one_theta_adapted_by_two_commands(tmp_path) -> None:
    """The same run (same training) adapted on ``test_tight`` by one command and on
    ``test`` by another: one run with both splits; a split both hold keeps the first's."""
    sys.path.insert(0, str(REPO / "research"))
    try:
        import safety_ablation
    finally:
        sys.path.remove(str(REPO / "research"))
    files = []
    for name, splits in (("tight", {"test_tight": 1.0}),
                         ("test", {"test": 2.0, "test_tight": 3.0})):
        data = _result(f"cmd {name}", [0], ["all"], {"all/cpo/seed0": 1.0})
        data["settings"]["splits"] = list(splits)
        data["runs"]["all/cpo/seed0"]["adaptation"] = {
            split: {"eval_cost": [cost]} for split, cost in splits.items()}
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    merged = safety_ablation.merge(files, tmp_path / "merged.json")
    assert merged["settings"]["splits"] == ["test_tight", "test"]
    assert merged["runs"]["all/cpo/seed0"]["adaptation"] == {
        "test_tight": {"eval_cost": [1.0]}, "test": {"eval_cost": [2.0]}}


def test_every_variant_has_a_meaning_on_the_page() -> None:
    sys.path.insert(0, str(REPO / "research"))
    try:
        import ablation_report
        import safety_ablation
    finally:
        sys.path.remove(str(REPO / "research"))
    assert set(safety_ablation.VARIANTS) <= set(ablation_report.VARIANT_MEANING)


def test_checkpoint_folders_name_the_training_flags_away_from_their_defaults(tmp_path) -> None:
    """A θ trained with other batch flags is never restored for a run at the defaults (or the
    other way round); at the defaults the folder keeps the name earlier runs used."""
    from research.safety_ablation import _saved_dir, parse_args

    def folder(*flags: str) -> str:
        args = parse_args(["--checkpoints", str(tmp_path), "--out", "x.json", *flags])
        return _saved_dir(args, "all", "cpo", 0, 30).name

    assert folder() == "all-cpo-seed0-it30"
    assert folder("--tasks-per-iteration", "8") == "all-cpo-seed0-it30-t8"
    assert folder("--inner-delta", "0.01") == "all-cpo-seed0-it30-id0.01"
    assert folder("--episodes-per-task", "8") == "all-cpo-seed0-it30-e8"
    # a variant that fixes the episode count overrides the flag, so the flag names nothing
    args = parse_args(["--checkpoints", str(tmp_path), "--out", "x.json",
                       "--episodes-per-task", "8"])
    assert _saved_dir(args, "all_eps8", "cpo", 0, 30).name == "all_eps8-cpo-seed0-it30"
