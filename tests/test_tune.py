"""scripts/tune.py: an Optuna study of main.py runs on tiny data, shared by worker processes."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from cli import UserError, run_cli

import optuna
import pytest
from conftest import PROJECT_DIR, Finished, assert_user_error, write_idx_dir

from recipes import resolve_recipe
from train import EpochStats, TrainingDiverged, check_loss, summary_line

_spec = importlib.util.spec_from_file_location("tune", PROJECT_DIR / "scripts" / "tune.py")
tune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune)
TINY = ["--allow-custom-data", "--no-download", "--val-size", "32", "--device", "cpu"]
# lr ~1e-9: the weights stay as drawn, so every epoch's val accuracy is that of the untrained network
UNTRAINED = {"epochs": 2, "lr": {"low": 1e-9, "high": 2e-9, "log": True}}


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    write_idx_dir(tmp_path / "mnist")
    return tmp_path


def flags(folder: Path, space: dict, *extra: str) -> list[str]:
    (folder / "space.json").write_text(json.dumps(space))
    return [
        "--space", str(folder / "space.json"), "--storage", f"sqlite:///{folder / 'optuna.db'}",
        "--data-dir", str(folder / "mnist"), "--out-dir", str(folder / "runs"), *TINY, *extra,
    ]  # fmt: skip


def worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # two workers share the cores
    env.pop("MNIST_DIR", None)
    command = [sys.executable, str(PROJECT_DIR / "scripts" / "tune.py"), *args]
    return subprocess.Popen(
        command, cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stored(folder: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="space", storage=f"sqlite:///{folder / 'optuna.db'}").trials


def run_tune(capsys, *argv: str) -> Finished:
    capsys.readouterr()
    try:
        run_cli(tune.main, list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return Finished(code, out.out, out.err)


def test_a_study_goes_on_across_runs_and_two_workers_finish_the_asked_trials(study_dir, capsys):
    # One run completes a trial: its score is main.py's last val accuracy.
    first = run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1", "--pruner", "none"))
    assert first.returncode == 0, first
    metrics = json.loads((study_dir / "runs" / "space" / "trial-0" / "lenet5.json").read_text())
    assert metrics["epochs"][-1]["eval_split"] == "val"
    assert stored(study_dir)[0].value == metrics["epochs"][-1]["eval_accuracy"]
    # Two workers then take the same study to 3 trials. --prune-below 0.9: no untrained network
    # reaches it, so each of their trials is stopped after its first epoch.
    args = flags(study_dir, UNTRAINED, "--trials", "3", "--pruner", "none", "--prune-below", "0.9")
    other = worker(*args, "--out", str(study_dir / "summary1.json"))
    here = run_tune(capsys, *args, "--out", str(study_dir / "summary0.json"))  # this process is the second worker
    out, err = other.communicate(timeout=300)
    assert (here.returncode, other.returncode) == (0, 0), (here, err)
    trials = stored(study_dir)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    for t in trials[1:]:
        assert list(t.intermediate_values) == [1] and t.user_attrs["stopped"] == "pruned after epoch 1"
        log = (study_dir / "runs" / "space" / f"trial-{t.number}" / "train.log").read_text()
        assert "epoch 1/2" in log and "Traceback" not in log, log  # stopped cleanly, as by Ctrl-C
    for i in range(2):
        best = json.loads((study_dir / f"summary{i}.json").read_text())["best"]
        assert best["number"] == 0 and best["val_accuracy"] == trials[0].value
        assert best["command"].startswith("python main.py --epochs 2 --lr ") and best["command"].endswith(" --seed 0")
    assert "best: trial 0" in here.stdout


def test_ctrl_c_stops_the_study_with_its_storage_intact(study_dir, capsys):
    log = study_dir / "runs" / "space" / "trial-0" / "train.log"  # written once trial 0 is under way
    under_way, give_up = threading.Event(), threading.Event()

    def interrupt_once_under_way() -> None:
        while not log.exists() and not give_up.wait(0.1):
            pass
        if log.exists():
            under_way.set()
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C: KeyboardInterrupt in this (the main) thread

    threading.Thread(target=interrupt_once_under_way, daemon=True).start()
    try:
        done = run_tune(capsys, *flags(study_dir, {"epochs": 10_000}, "--trials", "1"))  # would never end alone
    finally:
        give_up.set()
    assert under_way.is_set() and done.returncode == 130 and "Traceback" not in done.stderr, done
    assert [t.state for t in stored(study_dir)] == [optuna.trial.TrialState.FAIL]  # not left RUNNING
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    "space, message",
    [
        ({"colour": 1}, "'colour' is not one of main.py's recipe flags"),
        ({"lr": {"low": 0.1, "high": 0.01}}, "lr: low and high are numbers, low <= high"),
        ({"momentum": {"low": 0.9, "high": 1.5}}, "argument --momentum: must be a finite number >= 0 and <= 0.999"),
        ({"lr": {"low": 0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"augment": {"choices": ["yes"]}}, "augment is true or false, got 'yes'"),
        ({"schedule": {"choice": ["linear"]}}, "schedule: give {'low': L, 'high': H}"),
        ([], "give an object that maps recipe flags"),
    ],
)
def test_a_bad_space_is_one_line_before_any_storage(study_dir, capsys, space, message):
    done = run_tune(capsys, *flags(study_dir, space))
    assert_user_error(done, message)
    assert not (study_dir / "optuna.db").exists() and not (study_dir / "runs").exists()


def test_a_bad_storage_url_or_space_name_is_one_line(study_dir, capsys):
    done = run_tune(capsys, *flags(study_dir, UNTRAINED), "--storage", "nonsense://x")
    assert_user_error(done, "--storage nonsense://x: Can't load plugin: sqlalchemy.dialects:nonsense")
    done = run_tune(capsys, "--space", "fastest")
    assert_user_error(done, "--space 'fastest' is neither a preset (fast, fast3, best) nor a .json file")


def test_a_study_refuses_workers_with_other_settings(study_dir, capsys):
    settings = {"space": UNTRAINED, "val_size": 32, "seed": 1, "limit": None}  # as tune.py stores them
    tune.open_study(f"sqlite:///{study_dir / 'optuna.db'}", "space", tune.make_pruner("none", None), settings)
    done = run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1"))  # --seed 0
    assert_user_error(done, "study 'space' in that storage was started with another seed")
    assert not (study_dir / "runs" / "space").exists()


def test_the_presets_are_valid_spaces_and_draw_every_value(study_dir):
    for name, space in tune.SPACES.items():
        values = tune.draw(optuna.create_study(direction="maximize").ask(), tune.load_space(name))
        assert set(values) <= set(space), name
        tune.FLAGS.parse_args(tune.recipe_tokens(values))  # main.py's own checks accept the drawn flags


def test_the_epoch_line_is_read_as_main_py_prints_it():
    line = summary_line(EpochStats(3, 0.1, 0.97, 2.0, 100.0, "val", 0.9812, 0.0), 4)
    match = tune.EPOCH_LINE.match(line)
    assert match and (int(match[1]), match[2], float(match[3])) == (3, "val", 98.12), line


def test_a_diverged_loss_is_told_from_main_pys_error_line():
    for loss in (float("nan"), 1e6):
        with pytest.raises(TrainingDiverged) as err:
            check_loss(loss, 1, 5)
        assert tune.diverged(f"error: {err.value}"), err.value
    assert not tune.diverged("error: --data-dir x: no MNIST files there")


def test_the_median_pruner_judges_from_the_second_epoch_and_a_floor_from_the_first():
    study = optuna.create_study(direction="maximize", pruner=tune.make_pruner("median", None))
    for _ in range(5):  # the median pruner's startup trials
        trial = study.ask()
        trial.report(0.9, 1)
        trial.report(0.9, 2)
        study.tell(trial, 0.9)
    trial = study.ask()
    trial.report(0.1, 1)
    assert not trial.should_prune()
    trial.report(0.1, 2)
    assert trial.should_prune()
    floor = optuna.create_study(direction="maximize", pruner=tune.make_pruner("none", 0.5)).ask()
    floor.report(0.4, 1)
    assert floor.should_prune()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_drawn_recipe_never_pairs_flags_main_py_refuses(optimizer):
    space = {
        "optimizer": {"choices": ["sgd", "adam"]},
        "nesterov": {"choices": [True]},
        "beta2": {"low": 0.9, "high": 0.99},
    }
    values = tune.draw(optuna.trial.FixedTrial({"optimizer": optimizer, "nesterov": True, "beta2": 0.95}), space)
    assert ("nesterov" in values) == (optimizer == "sgd") and ("beta2" in values) == (optimizer != "sgd")
    assert resolve_recipe("default", values).optimizer == optimizer  # main.py's checks accept the pair


def test_a_space_file_nested_too_deeply_is_one_line(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="not readable as JSON"):
        tune.load_space(str(tmp_path / "deep.json"))


def test_tune_starts_where_fcntl_is_missing(monkeypatch, tmp_path):
    """Windows has no fcntl: the script still imports, and workers take turns without the lock file."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError
    spec = importlib.util.spec_from_file_location("tune_without_fcntl", PROJECT_DIR / "scripts" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.fcntl is None
    with module.turn(tmp_path / "optuna.db.lock"):
        pass
    assert not (tmp_path / "optuna.db.lock").exists()
