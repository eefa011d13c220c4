"""The scripts that make the README's tables: their guards (the measurements themselves are in docs/)."""

import importlib.util

from cli import run_cli

import pytest
from conftest import PROJECT_DIR, assert_user_error


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_DIR / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
