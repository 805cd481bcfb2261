"""research/episode_ends.py: where episodes end on a real PointButton layout."""
import json

from research import episode_ends


def test_random_policy_record(tmp_path):
    out = tmp_path / "ends.json"
    episode_ends.main(["--family", "PointButton", "--split", "test", "--tasks", "2",
                       "--episodes", "2", "--episode-steps", "30",
                       "--policies", "noise=random", "--out", str(out)])
    data = json.loads(out.read_text())
    record = data["policies"]["noise"]
    assert record["episodes"] == 4
    # 30 steps of a point robot from a placement inside the square: it cannot get far.
    assert 0.0 <= record["mean_end_over_extent"] < 1.5
    assert 0.0 <= record["share_ending_outside"] <= 1.0
    assert record["mean_cost"] >= 0.0
    assert data["settings"]["episode_steps"] == 30


def test_same_episodes_for_every_policy(tmp_path):
    """Common random numbers: the same tasks and episode seeds give the same record."""
    out = tmp_path / "ends.json"
    episode_ends.main(["--family", "PointButton", "--tasks", "1", "--episodes", "1",
                       "--episode-steps", "20", "--policies", "a=random", "b=random",
                       "--out", str(out)])
    records = json.loads(out.read_text())["policies"]
    assert records["a"] == records["b"]
