import json

import pytest

from scripts.bench import print_report, round_order, summarize_sides
from scripts.runs import Run


def test_bench_quick_runs_end_to_end(tmp_path, cli):
    out = tmp_path / "bench.json"
    # Random synthetic labels: about 10 % accuracy, so a 5 % target is reached and every path is taken.
    done = cli("scripts.bench", "--quick", "--rounds", "1", "--target", "0.05", "--best-target", "0.06", "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["data"] == "synthetic (--quick)" and set(result["sides"]) == {"baseline", "peer", "fast"}
    for side, row in result["sides"].items():
        (run,) = row["runs"]
        assert run["epochs"] == 1 and run["eval_split"] == "test" and run["epoch_reached"] == 1, side
        assert 0 < run["train_seconds"] < run["seconds_to_target"] <= run["wall_seconds"], side
        assert f"{side:<21}{run['seconds_to_target']:>12.1f}" in done.stdout
    assert f"{result['sides']['fast']['times_sooner_than_baseline']:.1f}x" in done.stdout  # the report shows the JSON's
    peer = result["sides"]["fast"]["times_sooner_than_peer"]
    assert f"fast reached 5.0% {peer:.2f}x as soon as the peer" in done.stdout
    assert f"{result['throughput_ratio']:.2f}x" in done.stdout
    best = result["best"]  # the secondary line: the best recipe, timed to its own target
    assert best["target"] == 0.06 and [r["epochs"] for r in best["runs"]] == [1]
    reached = best["runs"][0]["seconds_to_target"]
    said = f"{reached:.1f} s (epoch 1" if reached else "not reached (epoch None"
    assert f"best recipe to 6.0%: {said}" in done.stdout
    assert result["hardware"]["flops_per_training_image"] > 2e6  # ~2.26 MFLOP: forward + backward of LeNet-5
    assert result["inference_images_per_second"] > 0


def run(seconds: float | None, wall: float = 100.0) -> Run:
    return Run(0.99, 3, 0.99, 3 if seconds else None, seconds, "test", 0.99, 0.99, 1000.0, 10.0, wall)


def test_a_baseline_that_never_reaches_the_target_gives_a_lower_bound():
    summary = summarize_sides({"baseline": [run(None, wall=200)], "fast": [run(10), run(12)], "default": [run(40)]})
    assert summary["baseline"]["seconds_to_target"] is None
    assert summary["fast"]["seconds_to_target"] == 11  # the median
    assert summary["fast"]["times_sooner_than_baseline"] == pytest.approx(200 / 11)
    assert summary["fast"]["times_sooner_is_lower_bound"] is True
    reached = summarize_sides({"baseline": [run(90)], "fast": [run(10)], "default": [run(30), run(None)]})
    assert reached["fast"]["times_sooner_than_baseline"] == 9 and not reached["fast"]["times_sooner_is_lower_bound"]
    assert reached["default"]["seconds_to_target"] is None  # one of its runs never got there
    assert reached["default"]["times_sooner_than_baseline"] is None


def test_the_side_after_the_baseline_takes_turns():
    orders = [round_order(["baseline", "peer", "fast", "default"], n)[1:] for n in (1, 2, 3, 4)]
    assert orders == [["peer", "fast", "default"], ["fast", "default", "peer"], ["default", "peer", "fast"],
                      ["peer", "fast", "default"]]  # fmt: skip
    assert round_order(["peer", "fast", "default"], 2) == ["fast", "default", "peer"]  # --sides without the baseline


def test_the_package_sides_are_compared_with_the_peer_too():
    """The peer is timed from launch to exit (its one epoch, as its notebook times itself), whatever it reached."""
    summary = summarize_sides({"baseline": [run(90)], "peer": [run(12, wall=13)], "fast": [run(6), run(5)]})
    assert summary["fast"]["times_sooner_than_peer"] == pytest.approx(13 / 5.5)
    assert "times_sooner_than_peer" not in summary["peer"]
    missed = summarize_sides({"peer": [run(None, wall=14)], "fast": [run(5)]})  # and no baseline side at all
    assert missed["fast"]["times_sooner_than_peer"] == pytest.approx(14 / 5)
    assert "times_sooner_than_baseline" not in missed["fast"]
    assert summarize_sides({"peer": [run(12)], "fast": [run(None)]})["fast"]["times_sooner_than_peer"] is None


def test_a_compiled_sides_cold_run_is_reported_and_compared_like_a_side(capsys):
    """The warm-up of a compiled side (its compilation into an empty cache) is a row of its own, outside the rounds."""
    runs = {"peer": [run(7, wall=8)], "fast-compiled": [run(4), run(5)], "fast-compiled (cold)": [run(16)]}
    sides = summarize_sides(runs)
    assert sides["fast-compiled"]["times_sooner_than_peer"] == pytest.approx(8 / 4.5)
    assert sides["fast-compiled (cold)"]["times_sooner_than_peer"] == pytest.approx(8 / 16)
    machine = {"cpu": "test", "threads": 2, "torch": "2.14.1", "device": "cpu"}
    print_report({"machine": machine, "data": "MNIST", "target": 0.99, "sides": sides, "best": None,
                  "throughput_ratio": None, "inference_images_per_second": 1.0, "hardware": None})  # fmt: skip
    out = capsys.readouterr().out
    assert f"{'fast-compiled (cold)':<21}{16.0:>12.1f}" in out and f"{'fast-compiled':<21}{4.5:>12.1f}" in out
    assert "fast-compiled reached 99.0% 1.78x as soon as the peer" in out
