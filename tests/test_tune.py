"""scripts/tune.py: an Optuna study of in-process training runs on tiny data, shared by worker processes."""

import contextlib
import importlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from support.cli import UserError, run_cli

import optuna
import pytest
from conftest import PROJECT_DIR, Finished, assert_user_error, write_idx_dir

import train
from scripts import tune
from support.recipes import resolve_recipe

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
        "--data-dir", str(folder / "mnist"), *TINY, *extra,
    ]  # fmt: skip


def worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}  # two workers share the cores
    env.pop("MNIST_DIR", None)
    command = [sys.executable, "-m", "scripts.tune", *args]
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


def test_a_study_goes_on_across_runs_and_two_workers_finish_the_asked_trials(study_dir, capsys, cli):
    # One run completes a trial: its score is the last epoch's val accuracy, as main.py trains and scores it.
    first = run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1", "--pruner", "none"))
    assert first.returncode == 0, first
    (trial,) = stored(study_dir)
    assert trial.value == trial.intermediate_values[2]
    out = study_dir / "main" / "lenet5.pt"
    data = ["--data-dir", study_dir / "mnist", "--allow-custom-data", "--no-download"]
    by_main = cli("main", *trial.user_attrs["flags"], "--seed", "0", "--val-size", "32", *data,
                  "--out", out, "--report-dir", study_dir / "main")  # fmt: skip
    assert by_main.returncode == 0, by_main.stderr
    assert json.loads(out.with_suffix(".json").read_text())["epochs"][-1]["eval_accuracy"] == trial.value
    # Two workers then take the same study to 3 trials. --prune-below 0.9: no untrained network
    # reaches it, so each of their trials is stopped after its first epoch, from fit's epoch hook.
    args = flags(study_dir, UNTRAINED, "--trials", "3", "--pruner", "none", "--prune-below", "0.9")
    other = worker(*args, "--out", str(study_dir / "summary1.json"))
    here = run_tune(capsys, *args, "--out", str(study_dir / "summary0.json"))  # this process is the second worker
    out, err = other.communicate(timeout=300)
    assert (here.returncode, other.returncode) == (0, 0), (here, err)
    trials = stored(study_dir)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    for t in trials[1:]:
        assert list(t.intermediate_values) == [1] and t.user_attrs["stopped"] == "pruned after epoch 1"
    for i in range(2):
        best = json.loads((study_dir / f"summary{i}.json").read_text())["best"]
        assert best["number"] == 0 and best["val_accuracy"] == trials[0].value
        assert best["command"].startswith("python main.py --epochs 2 --lr ") and best["command"].endswith(" --seed 0")
    assert "best: trial 0" in here.stdout


def test_a_dead_workers_trial_is_failed_and_run_again(study_dir, capsys):
    """A worker killed mid-trial leaves its trial RUNNING; once its heartbeat is older than the grace period, the
    next worker fails it and runs its values again: the study still finishes the asked trials."""
    beats = {"LENET5_TUNE_HEARTBEAT_S": "1", "LENET5_TUNE_GRACE_S": "2"}
    args = flags(study_dir, {"epochs": 10_000}, "--trials", "1")  # would never end alone
    doomed = worker(*args, env=beats)
    try:
        while not [t for t in stored_or_none(study_dir) if t.state.name == "RUNNING" and t.intermediate_values]:
            assert doomed.poll() is None, doomed.communicate()
            time.sleep(0.2)
    finally:
        doomed.kill()
        doomed.communicate()
    time.sleep(3)  # the grace period passes with no heartbeat
    with patched_env(beats):
        done = run_tune(capsys, *args, "--prune-below", "0.99")  # (so that the repeat stops after one epoch)
    assert done.returncode == 0, done
    first, again = stored(study_dir)
    assert (first.state.name, again.state.name) == ("FAIL", "PRUNED") and first.params == again.params
    assert again.system_attrs["failed_trial"] == first.number


def stored_or_none(folder: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return stored(folder)
    except (KeyError, Exception):  # the worker has not created the study yet
        return []


@contextlib.contextmanager
def patched_env(values: dict[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    importlib.reload(tune)  # (it reads them as it is imported)
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
        importlib.reload(tune)


def test_ctrl_c_stops_the_study_with_its_storage_intact(study_dir, capsys, monkeypatch):
    one_epoch, calls = train.train_one_epoch, []

    def interrupted_during_the_epoch(*args, **kwargs):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C: KeyboardInterrupt in the training loop
        return one_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted_during_the_epoch)
    done = run_tune(capsys, *flags(study_dir, {"epochs": 10_000}, "--trials", "1"))  # would never end alone
    assert calls and done.returncode == 130 and "Traceback" not in done.stderr, done
    assert [t.state for t in stored(study_dir)] == [optuna.trial.TrialState.FAIL]  # not left RUNNING


def test_a_locked_database_is_one_line_naming_the_cause(study_dir, capsys):
    import sqlite3

    run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1", "--pruner", "none"))
    holder = sqlite3.connect(study_dir / "optuna.db")
    holder.execute("BEGIN EXCLUSIVE")  # another program holds the file
    try:
        args = flags(study_dir, UNTRAINED, "--trials", "2")
        done = run_tune(capsys, *args, "--storage", f"sqlite:///{study_dir / 'optuna.db'}?timeout=0.2")
    finally:
        holder.rollback()
        holder.close()
    assert_user_error(done, "database is locked")


def test_out_naming_the_database_is_refused(study_dir, capsys):
    done = run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1"), "--out", str(study_dir / "optuna.db"))
    assert_user_error(done, "is the study's own database (--storage)")


def users_database(path: Path) -> bytes:
    """A SQLite file of another program's, with its own table: its bytes, to compare after a run."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE contacts (name TEXT)")
        db.commit()
    return path.read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--val-size", "96"], "--val-size 96 must be between 0 and 95 (the training images)"),
        (["--limit", "50", "--val-size", "49"], "--space: batch_size 64 is more than the 1 training images"),
    ],
)
def test_a_hold_out_or_batch_the_data_cannot_give_is_refused_before_any_storage(study_dir, capsys, extra, message):
    before = users_database(study_dir / "optuna.db")
    done = run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1", *extra))
    assert_user_error(done, message)
    assert (study_dir / "optuna.db").read_bytes() == before  # no Optuna table added, no trial stored


def test_a_database_of_something_else_is_refused_unchanged(study_dir, capsys):
    before = users_database(study_dir / "optuna.db")
    done = run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1"))
    assert_user_error(done, "is a SQLite database of something else (tables: contacts)")
    assert (study_dir / "optuna.db").read_bytes() == before
    assert not (study_dir / "optuna.db-journal").exists()


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
        ({"batch_size": {"choices": [[16, 32]]}}, "argument --batch-size: must be an integer"),
        ({"warmup_epochs": 3, "epochs": 2}, "--warmup-epochs 3 is longer than the run's 2 epochs"),
        ({"lr": {"low": 0.001, "high": 0.02, "log": "false"}}, "lr: log is true or false; got 'false'"),
        ({"epochs": {"low": 1, "high": 3, "step": "1"}}, "epochs: step is a number above 0; got '1'"),
        ({"epochs": {"low": 1, "high": 3, "step": 0}}, "epochs: step is a number above 0; got 0"),
    ],
)
def test_a_bad_space_is_one_line_before_any_storage(study_dir, capsys, space, message):
    done = run_tune(capsys, *flags(study_dir, space))
    assert_user_error(done, message)
    assert not (study_dir / "optuna.db").exists()


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
    assert all(t.state.name != "RUNNING" for t in stored(study_dir)) and not stored(study_dir)


def test_the_presets_are_valid_spaces_and_draw_every_value(study_dir):
    for name, space in tune.SPACES.items():
        values = tune.draw(optuna.create_study(direction="maximize").ask(), tune.load_space(name))
        assert set(values) <= set(space), name
        tune.FLAGS.parse_args(tune.recipe_tokens(values))  # main.py's own checks accept the drawn flags


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


def test_workers_take_turns_through_a_lock_that_is_gone_after_the_study(study_dir, capsys, monkeypatch):
    """Each worker's turn at counting and starting trials is the package's one lock (support/files.turn): no lock
    file is left beside the SQLite file once the study ends (an empty optuna.db.lock was, every time). Where files
    cannot be locked (Windows has no fcntl), the workers go without."""
    from support import files

    def locks() -> list[str]:
        return [p.name for p in study_dir.iterdir() if "lock" in p.name]

    done = run_tune(capsys, *flags(study_dir, UNTRAINED, "--trials", "1"))
    assert done.returncode == 0, done.stderr
    assert locks() == []
    with tune.taking_turns(study_dir / "optuna.db"):
        assert locks() == [".optuna.db.lock"]
        assert (study_dir / ".optuna.db.lock").read_text() == f"{os.getpid()}\n"
    assert locks() == []
    monkeypatch.setattr(files, "fcntl", None)
    with tune.taking_turns(study_dir / "optuna.db"):
        assert locks() == []
