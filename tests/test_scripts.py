"""The scripts that make the README's tables: their guards (the measurements themselves are in docs/)."""

import importlib
import json

from support.cli import run_cli

import pytest
from conftest import assert_user_error


def script(name: str):
    return importlib.import_module(f"scripts.{name}")


def finished(main, *argv: str, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, list(argv))
    out = capsys.readouterr()
    return type("Finished", (), {"returncode": exit_.value.code, "stdout": out.out, "stderr": out.err})


def test_seeds_sets_the_outputs_itself(capsys, tmp_path):
    seeds = script("seeds")
    done = finished(seeds.main, "--out-dir", str(tmp_path), "--report-dir", "r", capsys=capsys)
    assert_user_error(done, "main.py's --out, --report-dir and --resume are set per seed")
    (tmp_path / "file").write_text("x")
    done = finished(seeds.main, "--out-dir", str(tmp_path / "file"), capsys=capsys)
    assert_user_error(done, "--out-dir " + str(tmp_path / "file") + " is a file, not a folder")


def test_step_cost_times_every_part_of_a_single_process_step(capsys):
    script("step_cost").measure(global_batch=8, steps=2)
    line = capsys.readouterr().out.strip()
    assert line.startswith("rank 0: 1 process(es) x ") and ", 8 images: " in line, line
    ms = [float(part.rsplit(" ", 2)[-2]) for part in line.split(": ", 2)[2].split(", ")]
    assert len(ms) == 2 and all(m > 0 for m in ms), line  # gather+distort, step; no DDP outside torchrun


def test_step_cost_checks_its_flags(capsys, monkeypatch):
    step_cost = script("step_cost")
    assert finished(step_cost.main, "--steps", "0", capsys=capsys).returncode == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = finished(step_cost.main, "--batch-size", "63", capsys=capsys)
    assert done.returncode == 2 and "must split evenly over 2 processes" in done.stderr


def test_weight_average_scores_every_decay_on_the_hold_out_only(capsys, idx_dir, tmp_path):
    average = script("weight_average")
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--batch-size", "16"]
    out = tmp_path / "average.json"
    average.main([*data, "--val-size", "32", "--epochs", "2", "--decays", "0.5", "0.9", "--out", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["epochs"]
    assert [sorted(r) for r in rows] == [["ema 0.5", "ema 0.9", "epoch", "trained"]] * 2
    assert all(0 <= r[key] <= 1 for r in rows for key in ("trained", "ema 0.5", "ema 0.9"))
    assert f"    2 {100 * rows[1]['trained']:>7.2f}% {100 * rows[1]['ema 0.5']:>10.2f}%" in printed  # as written
    assert_user_error(finished(average.main, *data, "--val-size", "0", capsys=capsys), "would score on the test set")


def test_update_cost_times_every_part_of_a_step(capsys):
    script("update_cost").main(["--repeats", "1"])
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [row[:40].strip() for row in rows] == [
        "SGD step (default recipe)", "Adam step, fused (train.py)", "Adam step, foreach (torch's default)",
        "weight average update", "loss + backward", "loss + backward, label smoothing",
        "forward + backward, batch of 64",
    ]  # fmt: skip
    assert all(float(row[40:]) > 0 for row in rows)


def test_late_distortions_finishes_each_variant_from_the_branch(capsys, idx_dir, tmp_path):
    late = script("late_distortions")
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--batch-size", "16"]
    data += ["--val-size", "32", "--epochs", "3"]
    out = tmp_path / "late.json"
    late.main([*data, "--elastic-alpha", "8", "--branch", "1", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())["val_accuracy"]
    names = ["as trained"] + [f"{v}, last {n}" for n in (2, 1) for v in ("half", "affine", "clean")]
    assert list(results) == names and all(0 <= value <= 1 for value in results.values())
    assert f"{'clean, last 1':<26} {100 * results['clean, last 1']:6.2f}%" in printed
    assert_user_error(finished(late.main, *data, "--branch", "3", capsys=capsys), "--branch epochs between 1 and 2")
    assert_user_error(finished(late.main, *data, "--branch", "1", "--no-augment", capsys=capsys), "augmented recipe")


def test_late_distortions_ctrl_c_exits_130_without_a_traceback(capsys, idx_dir, monkeypatch):
    import os
    import signal

    import train

    late = script("late_distortions")
    monkeypatch.setattr(train, "check_loss", lambda *args: os.kill(os.getpid(), signal.SIGINT))  # a real Ctrl-C
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--batch-size", "16"]
    done = finished(late.main, *data, "--val-size", "32", "--epochs", "3", "--branch", "1", capsys=capsys)
    assert done.returncode == 130 and done.stderr.strip() == "interrupted"


def test_cold_start_checks_its_flags_before_any_run(capsys, monkeypatch):
    cold_start = script("cold_start")
    monkeypatch.setattr(cold_start, "measure", lambda flags: pytest.fail("a run started"))
    for runs in ("0", "-1", "abc"):
        done = finished(cold_start.main, "--runs", runs, "--", "--epochs", "1", capsys=capsys)
        assert done.returncode == 2 and "error: argument --runs: must be an integer >= 1" in done.stderr
    assert cold_start.parse(["--runs", "2", "--", "--recipe", "fast"]) == (2, ["--recipe", "fast"])
