"""The entry points as a user runs them: end to end on tiny synthetic data, every user error, and
Ctrl-C or a closed pipe at the moments that used to lose work."""

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import N_TEST, PROJECT_DIR, TINY, assert_user_error, limited, run_script, write_idx_dir

from helper import state_digest


@pytest.fixture
def trained(tmp_path, cli):
    """One tiny end-to-end `python main.py` run (in this process: the real-process runs are below)."""
    data = write_idx_dir(tmp_path / "mnist", gz=False)
    out, reports = tmp_path / "ckpt" / "lenet5.pt", tmp_path / "reports"
    done = cli(
        "main", "--data-dir", data, *TINY, "--epochs", "2", "--log-interval", "2", "--out", out, "--report-dir", reports
    )
    assert done.returncode == 0, done.stderr
    return tmp_path, data, out, reports, done.stdout


def test_main_writes_checkpoint_report_and_plots(trained):
    root, _, out, reports, stdout = trained
    assert "60,806 trainable parameters" in stdout
    assert "epoch 2/2: train loss" in stdout
    assert "[1,     2] loss:" in stdout  # the running loss at log intervals
    assert "Accuracy of the network on test images:" in stdout and "Accuracy of 9:" in stdout
    for name in ("metrics.json", "confusion_matrix.png", "misclassified.png", "loss.png", "accuracy.png"):
        assert (reports / name).stat().st_size > 0 and str(reports / name) in stdout
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert len(metrics["epochs"]) == 2 and 0 <= metrics["test_accuracy"] <= 1
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["metrics"] == metrics  # the .json never disagrees with its checkpoint
    assert checkpoint["epoch"] == 2 and checkpoint["train_state"]["epoch"] == 2
    assert len(checkpoint["data"]["fingerprint"]) == 16 and checkpoint["data"]["test"] == N_TEST
    assert not out.with_name("lenet5.resume.pt").exists()


def test_eval_reproduces_main_accuracy(cli, trained):
    root, data, out, _, _ = trained
    reports = root / "eval-reports"
    done = cli("eval", "--weights", out, "--data-dir", data, *TINY[:2], "--report-dir", reports, "--index", "3")
    assert done.returncode == 0, done.stderr
    expected = json.loads(out.with_suffix(".json").read_text())["test_accuracy"]
    assert f"Accuracy of the network on test images: {100 * expected:.2f}%" in done.stdout
    assert json.loads((reports / "metrics.json").read_text())["total"] == N_TEST
    for name in ("confusion_matrix.png", "misclassified.png", "filters.png", "feature_maps.png"):
        assert (reports / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["main", "--data-dir", "{tmp}/missing", "--cache-dir", "{tmp}/c"], "--data-dir {tmp}/missing: no such folder"),
        (["main", "--data-dir", "{tmp}/garbage.pt"], "--data-dir {tmp}/garbage.pt is a file, not a folder"),
        (["main", "--data-dir", "{tmp}/mnist", *TINY[:2], "--out", "{tmp}/mnist/train-labels-idx1-ubyte.gz"],
         "--out {tmp}/mnist/train-labels-idx1-ubyte.gz is the data file train-labels-idx1-ubyte.gz, which this "
         "command reads"),
        (["main", "--cache-dir", "{tmp}/cache", "--out", "{tmp}/cache/test.pt"],
         "--out {tmp}/cache/test.pt is the data cache's test.pt (--cache-dir), which this command reads"),
        (["main", "--tensorboard", "{tmp}/o/lenet5.pt"], "--tensorboard {tmp}/o/lenet5.pt is also --out: one would"),
        (["main", "--tensorboard", "{tmp}/o/loss.png"], "--tensorboard {tmp}/o/loss.png is also --report-dir's"),
        (["main", "--data-dir", "{tmp}/mnist", "--cache-dir", "{tmp}/cache", "--no-download"],
         "holds 96 images, expected 60,000"),
        (["main", "--epochs", "0"], "argument --epochs: must be an integer >= 1 and <= 10000, got 0"),
        (["main", "--epochs", "1e9"], "argument --epochs: must be an integer"),
        (["main", "--lr", "nan"], "argument --lr: must be a finite number > 0, written in decimal digits, got 'nan'"),
        (["main", "--lr", "-0.1"], "argument --lr: must be a finite number > 0"),
        (["main", "--lr", "1e39"], "argument --lr: must be at most 3.403e+38 (float32's largest), got 1e39"),
        (["main", "--momentum", "1"], "argument --momentum: must be a finite number >= 0 and <= 0.999"),
        (["main", "--weight-decay", "inf"], "argument --weight-decay: must be a finite number >= 0"),
        (["main", "--batch-size", "-1"], "argument --batch-size: must be an integer >= 1"),
        (["main", "--limit", "0"], "argument --limit: must be an integer >= 1"),
        (["main", "--val-size", "-5"], "argument --val-size: must be an integer >= 0"),
        (["main", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
        (["main", "--log-interval", "0"], "argument --log-interval: must be an integer >= 1"),
        (["main", "--epochs", "1" + "0" * 400], "argument --epochs: must be an integer >= 1 and <= 10000"),
        (["main", "--elastic-alpha", "34", "--no-augment"], "distort the augmented images: drop --no-augment"),
        (["main", "--recipe", "best", "--no-augment", "--elastic-sigma", "5"], "drop --no-augment"),
        (["main", "--nesterov", "--momentum", "0"], "--nesterov needs momentum"),
        (["main", "--res", "x.pt"], "unrecognized arguments: --res x.pt"),
        (["main", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["main", "--resume", "{tmp}/none.pt"], "no such checkpoint"),
        (["main", "--resume", "{tmp}/garbage.pt"], "not a readable checkpoint"),
        (["main", "--out", "{tmp}/garbage.pt/lenet5.pt"], "is a file, not a folder"),
        (["main", "--out", "{tmp}/mnist"], "--out {tmp}/mnist is a directory; give a file name"),
        (["main", "--out", "{tmp}/fifo"], "--out: {tmp}/fifo is not a regular file (a pipe); give a file name"),
        (["main", "--out", "{tmp}/loop1"], "--out {tmp}/loop1: cannot be resolved"),
        (["main", "--report-dir", "{tmp}/reports"], "--report-dir: {tmp}/reports/filters.png is not a regular file"),
        (["eval", "--report-dir", "{tmp}/reports"], "--report-dir: {tmp}/reports/filters.png is not a regular file"),
        (["main", "--out", "{tmp}/metrics.json"], "give a name ending in .pt"),
        (["main", "--out", "{tmp}/m"], "{tmp}/m: give a name ending in .pt"),
        (["main", "--out", "{tmp}/m.pt "], "{tmp}/m.pt : give a name ending in .pt"),
        (["main", "--out", "{tmp}/.pt"], "{tmp}/.pt: give a name ending in .pt, such as lenet5.pt"),
        (["main", "--out", "{tmp}/m.resume.pt"], "a name ending in .resume.pt is an interrupted run's resume file"),
        (["main", "--report-dir", "{tmp}/garbage.pt"], "--report-dir {tmp}/garbage.pt is a file, not a folder"),
        (["main", "--data-dir", "{tmp}/mnist", *TINY[:2], "--batch-size", "97"], "--batch-size 97 is more than the 96"),
        (["main", "--data-dir", "{tmp}/mnist", *TINY[:2], "--val-size", "96"], "--val-size 96 must be between 0"),
        (["eval", "--weights", "{tmp}/garbage.pt"], "not a readable checkpoint"),
        (["eval", "--weights", "{tmp}/none.pt"], "no such checkpoint"),
        (["eval", "--weights", "{tmp}"], "is a directory; pass the checkpoint file"),
        (["eval", "--limit", "0"], "argument --limit: must be an integer >= 1, got 0"),
        (["eval", "--limit", "-5"], "argument --limit: must be an integer >= 1, got -5"),
        (["eval", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
        (["eval", "--report-dir", "{tmp}/garbage.pt"], "--report-dir {tmp}/garbage.pt is a file, not a folder"),
        (["eval", "--report-dir", "{tmp}/garbage.pt/reports"], "cannot create"),
        (["eval", "--weights", "{tmp}/weights.pt", "--data-dir", "{tmp}/mnist", *TINY[:2], "--index", "40"],
         "--index 40 must be below 40"),
        (["scripts.bench", "--out", "{tmp}"], "--out {tmp} is a directory"),
        (["main", "--epochs", "1_000"], "argument --epochs: must be an integer >= 1 and <= 10000, written in decimal"),
        (["predict", "examples", "--device", "cuda"], "--device cuda is not available on this machine"),
        (["scripts.bench", "--rounds", "0"], "argument --rounds: must be an integer >= 1"),
    ],
)  # fmt: skip
def test_user_errors_exit_2_with_one_line(cli, tmp_path, weights, args, message):
    write_idx_dir(tmp_path / "mnist")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 50)
    os.mkfifo(tmp_path / "fifo")  # like /dev/null: renaming a file over it would replace it
    (tmp_path / "reports").mkdir()
    os.mkfifo(tmp_path / "reports" / "loss.png")  # main.py writes it; eval.py removes main's (a report is whole)
    os.mkfifo(tmp_path / "reports" / "filters.png")  # the other way round: each command checks both
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    weights.rename(tmp_path / "weights.pt")
    module, *rest = [a.format(tmp=tmp_path) for a in args]
    defaults = {
        "main": ["--out", tmp_path / "o" / "lenet5.pt", "--report-dir", tmp_path / "o"],
        "eval": ["--report-dir", tmp_path / "e"],
    }
    for flag, value in zip(defaults.get(module, [])[::2], defaults.get(module, [])[1::2]):
        rest += [] if flag in rest else [flag, value]  # never the project's own checkpoints/ or reports/
    before = sorted(tmp_path.rglob("*"))
    assert_user_error(cli(module, *rest), message.format(tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no folder left behind


def test_a_foreign_file_given_as_resume_is_named_as_resume(cli, tmp_path):
    """Its default --out's resume file is the file itself: it was refused as "--resume's finished checkpoint's resume
    file … choose another --out", a flag not given."""
    (tmp_path / "o.resume.pt").write_text("not mine")
    done = cli("main", "--resume", tmp_path / "o.resume.pt", "--report-dir", tmp_path / "r")
    assert_user_error(done, f"--resume {tmp_path / 'o.resume.pt'} is not a checkpoint this program saved; pass the")


def test_a_pipe_given_as_resume_is_named_as_resume(cli, tmp_path):
    os.mkfifo(tmp_path / "f.png")
    done = cli("main", "--resume", tmp_path / "f.png", "--report-dir", tmp_path / "r")  # (no --out: beside --resume)
    assert_user_error(done, f"--resume: {tmp_path / 'f.png'} is not a regular file (a pipe)")


@pytest.mark.parametrize("where", ["missing", "a file in MNIST_DIR", "truncated copy"])
def test_a_wrong_data_dir_is_refused_though_the_cache_is_valid(cli, tmp_path, real_mnist_dir, monkeypatch, where):
    """A verified cache of the real MNIST, and a mistyped, wrong or damaged data folder: refused at once
    (exit 2), never a silent run on the cache that replaces a checkpoint."""
    from data import load_mnist

    cache = tmp_path / "cache"
    load_mnist(real_mnist_dir, cache, download=False)  # the cache, made from the real files
    folder = tmp_path / "typo"
    if where == "a file in MNIST_DIR":
        folder.write_text("not a folder")
    elif where == "truncated copy":
        shutil.copytree(real_mnist_dir, folder)
        images = folder / "train-images-idx3-ubyte.gz"
        images.chmod(0o644)
        images.write_bytes(images.read_bytes()[:5_000_000])
    flags = ["--cache-dir", cache, "--no-download", "--out", tmp_path / "o" / "m.pt", "--report-dir", tmp_path / "r"]
    if where == "a file in MNIST_DIR":
        monkeypatch.setenv("MNIST_DIR", str(folder))
    else:
        flags += ["--data-dir", folder]
    message = {"missing": "--data-dir {f}: no such folder", "a file in MNIST_DIR": "MNIST_DIR {f} is a file, not a",
               "truncated copy": "{f}/train-images-idx3-ubyte.gz: cannot be read or decompressed"}[where]  # fmt: skip
    assert_user_error(cli("main", *flags, "--limit", "100"), message.format(f=folder))
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_a_refused_experiment_leaves_no_folder(cli, tmp_path, monkeypatch):
    """The experiment's runs/<time>_... folder is made at the start and removed when the run is refused, and
    runs/ with it when the run made that too."""
    import main

    monkeypatch.setattr(main, "EXPERIMENT_DIR", tmp_path / "runs")
    data = write_idx_dir(tmp_path / "mnist")
    assert_user_error(cli("main", "--data-dir", data, *TINY[:2], "--val-size", "96"), "--val-size 96 must be")
    assert not (tmp_path / "runs").exists()


def test_two_experiments_started_in_the_same_second_get_a_folder_each(tmp_path, monkeypatch):
    import main

    monkeypatch.setattr(main, "EXPERIMENT_DIR", tmp_path / "runs")
    paths = main.outputs({"lr": 0.02}, None, None, None, None)  # both runs' names: the same second
    with main.own_folder(paths, True) as first, main.own_folder(paths, True) as second:
        assert first.folder != second.folder and second.folder.name == paths.folder.name + "-2"
        assert first.checkpoint == first.folder / "lenet5.pt" and second.report_dir == second.folder / "reports"
        assert first.folder.is_dir() and second.folder.is_dir()
        second.checkpoint.write_text("a run that wrote")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [second.folder.name]  # the empty one is removed


RESUME_EDITS = {
    "extra-field": lambda state: state["recipe"].update(ema=0.999),  # a field a newer version might add
    "missing-field": lambda state: state["recipe"].pop("lr"),  # one an older version lacked
    "str-lr": lambda state: state["recipe"].update(lr="x"),
    "negative-batch": lambda state: state["recipe"].update(batch_size=-5),
    "not-a-dict": lambda state: state.update(recipe=[1, 2]),  # (refused as it is read: "is not a JSON object")
    "str-epoch": lambda state: state.update(epoch="x"),
}


def test_a_resume_file_from_another_version_is_one_line(cli, trained):
    tmp_path, data, out, _, _ = trained
    for name, edit in RESUME_EDITS.items():
        checkpoint = torch.load(out, weights_only=True)
        edit(checkpoint["train_state"])
        resume = tmp_path / f"{name}.pt"
        torch.save({**checkpoint, "digest": state_digest(checkpoint)}, resume)  # as that version would seal it
        done = cli("main", "--data-dir", data, *TINY[:2], "--resume", resume, "--out", tmp_path / "x.pt")
        expected = "is not a JSON object" if name == "not-a-dict" else "its recipe or model config does not fit this"
        assert_user_error(done, expected)


def test_cuda_request_without_gpu(cli):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = cli("main", "--device", "cuda")
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: --device cuda is not available on this machine; use --device cpu or auto"
    )


def test_help_shows_the_defaults(cli):
    done = cli("main", "--help")
    assert done.returncode == 0
    for default in ("(default: 10)", "(default: 0.01)", "(default: 0.95)", "(default: linear)", "(default: True)"):
        assert default in done.stdout
    help_text = " ".join(done.stdout.split())  # (argparse wraps lines)
    assert "(default: $MNIST_DIR or data/)" in help_text and "data/) (default: None)" not in help_text


def test_an_exploding_loss_saves_nothing(cli, tmp_path):
    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "out" / "lenet5.pt"
    done = cli("main", "--data-dir", data, *TINY, "--lr", "1e9", "--epochs", "3", "--out", out)
    assert_user_error(done, "training stopped and nothing was saved; lower --lr")
    assert not out.parent.exists()  # not even an empty folder


def test_ctrl_c_saves_a_checkpoint_that_resumes_to_the_same_weights(cli, tmp_path, monkeypatch):
    import train

    # A real SIGINT at a chosen training step (a moment picked by a timer made this test flaky).
    place, calls = train.place_batch, []

    def counting(*args):
        calls.append(1)
        if len(calls) == 120:  # step 20 of epoch 3
            os.kill(os.getpid(), signal.SIGINT)
        return place(*args)

    data = write_idx_dir(tmp_path / "mnist", n_train=800, n_test=40)  # 50 steps per epoch
    common = ["--data-dir", str(data), *TINY, "--epochs", "4", "--report-dir", str(tmp_path / "reports")]
    out = tmp_path / "interrupted" / "lenet5.pt"
    with monkeypatch.context() as patched:
        patched.setattr(train, "place_batch", counting)
        done = cli("main", *common, "--out", out)
    assert done.returncode == 130, done.stderr
    resume = out.with_name("lenet5.resume.pt")
    assert f"saved the state after epoch 2 to {resume}" in done.stdout and "Traceback" not in done.stderr
    assert not out.exists() and not (tmp_path / "reports").exists()  # no empty report folder
    said = next(line for line in done.stdout.splitlines() if line.startswith("continue with: "))
    command = shlex.split(said.removeprefix("continue with: "))  # the same flags (--out too), then --resume
    assert command[:2] == ["python", "main.py"] and command[2:-2] == [str(a) for a in [*common, "--out", out]]
    assert command[-2:] == ["--resume", str(resume)]

    differs = cli("main", *common, "--out", out, "--resume", resume, "--epochs", "5", "--lr", "0.01", "--full-c3")
    assert_user_error(differs, "these flags differ from it: --epochs 5 (it has --epochs 4); --full-c3")
    other = write_idx_dir(tmp_path / "other", n_train=800, n_test=41)
    elsewhere = cli("main", *common[2:], "--data-dir", other, "--out", out, "--resume", resume)
    assert_user_error(elsewhere, f"--resume {resume} was trained on other data")

    resumed = cli("main", *command[2:], "--epochs", "4")  # what it said to run (a flag of the same value is fine)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 4 epochs done, continuing" in resumed.stdout
    assert "epoch 3/4" in resumed.stdout and "epoch 2/4" not in resumed.stdout
    assert not resume.exists()  # the finished run no longer needs it
    straight = tmp_path / "straight" / "lenet5.pt"
    assert cli("main", *common, "--out", straight).returncode == 0
    a, b = torch.load(out, weights_only=True), torch.load(straight, weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["metrics"]["test_accuracy"] == b["metrics"]["test_accuracy"]


def test_ctrl_c_during_the_final_evaluation_keeps_the_trained_weights(cli, tmp_path, monkeypatch):
    import main

    data = write_idx_dir(tmp_path / "mnist")
    common = ["--data-dir", data, *TINY, "--epochs", "2", "--report-dir", tmp_path / "reports"]

    def ctrl_c(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(main, "evaluate", ctrl_c)
        done = cli("main", *common, "--out", tmp_path / "run" / "lenet5.pt")
    assert done.returncode == 130 and "saved the state with training finished" in done.stdout
    resumed = cli("main", *common, "--resume", tmp_path / "run" / "lenet5.resume.pt")  # no --out: beside it
    assert resumed.returncode == 0 and "2 of 2 epochs done, nothing left to train" in resumed.stdout
    assert "epoch 1/2" not in resumed.stdout
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["lenet5.json", "lenet5.pt"]


def test_a_broken_library_at_the_final_evaluation_keeps_the_trained_weights(tmp_path):
    """sklearn fails to import only when the test set is scored, after training: the finished training is saved as
    a resume file with one line saying why and how to continue, and the continue command finishes the run."""
    data, shim = write_idx_dir(tmp_path / "mnist"), tmp_path / "shim" / "sklearn"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("a broken install")\n')
    run = tmp_path / "run"
    common = ["main.py", "--data-dir", str(data), *TINY, "--epochs", "1", "--report-dir", str(tmp_path / "reports")]
    done = run_script(*common, "--out", str(run / "lenet5.pt"), env={"PYTHONPATH": str(shim.parent)})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: the test evaluation failed (ImportError: a broken install); saved the state")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["lenet5.resume.pt"]
    resumed = run_script(*common, "--resume", str(run / "lenet5.resume.pt"))
    assert resumed.returncode == 0 and "1 of 1 epochs done, nothing left to train" in resumed.stdout, resumed.stderr
    assert sorted(p.name for p in run.iterdir()) == ["lenet5.json", "lenet5.pt"]


@pytest.mark.parametrize("mishap", ["its disk fills", "its folder becomes a file"])
def test_a_final_save_that_fails_keeps_the_training_in_the_temporary_folder(cli, tmp_path, monkeypatch, mishap):
    """During training, --out's disk fills or its folder is replaced by a file: neither the checkpoint nor the resume
    file beside it can be written. The finished training goes to the system's temporary folder (it was lost), named
    in one line with the command that finishes the run where it was asked to be."""
    import pathlib
    import tempfile

    import train

    data, out, spare = write_idx_dir(tmp_path / "mnist"), tmp_path / "run" / "lenet5.pt", tmp_path / "spare"
    spare.mkdir()
    common = ["--data-dir", data, *TINY, "--epochs", "1", "--report-dir", tmp_path / "reports"]
    place, write_bytes = train.place_batch, pathlib.Path.write_bytes

    def disk_full_there(self, data):
        if self.parent == out.parent:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    def folder_becomes_a_file(*args):
        if out.parent.is_dir():
            shutil.rmtree(out.parent)
            out.parent.write_text("in the way")
        return place(*args)

    with monkeypatch.context() as patched:
        patched.setattr(tempfile, "tempdir", str(spare))
        if mishap == "its disk fills":
            patched.setattr(pathlib.Path, "write_bytes", disk_full_there)
        else:
            patched.setattr(train, "place_batch", folder_becomes_a_file)
        done = cli("main", *common, "--out", out)
    (saved,) = spare.glob("*.resume.pt")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: the checkpoint could not be saved (cannot write {out}")
    assert f"saved the state with training finished to {saved} instead of beside the checkpoint (" in done.stderr
    command = shlex.split(done.stderr.split("continue with: ")[1])
    assert command[-4:] == ["--out", str(out), "--resume", str(saved)]
    if out.parent.is_file():
        out.parent.unlink()  # the user clears the way
    finished = cli("main", *command[2:])
    assert finished.returncode == 0 and "1 of 1 epochs done, nothing left to train" in finished.stdout
    assert out.exists() and not saved.exists()


@pytest.mark.parametrize("name", ["m.json", "reports/loss.png"])
def test_a_file_of_the_users_put_at_an_outputs_name_during_the_run_is_kept(cli, tmp_path, monkeypatch, name):
    """The user writes a file at --out's metrics name, or at a figure's in the report folder, while the run trains:
    it is kept (it was replaced: the plan had checked the names at the start only). Without its .json the
    checkpoint is not written, and the finished training is kept as a resume file; the report is one warning."""
    import train

    data, out, reports, mine = (
        write_idx_dir(tmp_path / "mnist"),
        tmp_path / "m.pt",
        tmp_path / "reports",
        tmp_path / name,
    )
    place = train.place_batch

    def the_user_writes(*args):
        mine.parent.mkdir(exist_ok=True)
        mine.write_text("the user's own")
        return place(*args)

    with monkeypatch.context() as patched:
        patched.setattr(train, "place_batch", the_user_writes)
        done = cli("main", "--data-dir", data, *TINY, "--epochs", "1", "--out", out, "--report-dir", reports)
    assert mine.read_text() == "the user's own" and "Traceback" not in done.stderr
    appeared = f"{mine} was put there or changed while this command ran, and is not a"
    if name == "m.json":
        assert done.returncode == 1 and done.stderr.startswith(f"error: the checkpoint could not be saved ({appeared}")
        assert sorted(os.listdir(tmp_path)) == ["m.json", "m.resume.pt", "mnist"]
    else:
        assert done.returncode == 0 and done.stderr.startswith(f"warning: the report and figures in {reports} failed")
        assert appeared in done.stderr and out.exists() and sorted(os.listdir(reports)) == ["loss.png"]


def test_an_out_through_a_symlink_puts_the_metrics_beside_the_file_it_replaces(cli, tmp_path):
    data = write_idx_dir(tmp_path / "mnist")
    common = ["--data-dir", data, *TINY, "--epochs", "1", "--report-dir", tmp_path / "reports"]
    target = tmp_path / "kept" / "base.pt"
    assert cli("main", *common, "--out", target).returncode == 0
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    before = target.with_suffix(".json").read_text()
    assert cli("main", *common, "--seed", "1", "--out", link).returncode == 0
    assert link.is_symlink() and not (tmp_path / "link.json").exists()
    metrics = json.loads(target.with_suffix(".json").read_text())
    assert target.with_suffix(".json").read_text() != before and metrics["recipe"]["seed"] == 1
    assert torch.load(target, weights_only=True)["metrics"] == metrics


def test_ctrl_c_while_the_report_is_written_says_the_checkpoint_is_saved_and_how_to_report_it(
    cli, tmp_path, monkeypatch
):
    import main

    data, out, reports = write_idx_dir(tmp_path / "mnist"), tmp_path / "run" / "m.pt", tmp_path / "reports"

    def ctrl_c(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(main, "write_report", ctrl_c)
        done = cli("main", "--data-dir", data, *TINY, "--epochs", "1", "--out", out, "--report-dir", reports)
    assert done.returncode == 130 and sorted(p.name for p in out.parent.iterdir()) == ["m.json", "m.pt"]
    said = done.stdout.strip().splitlines()[-1]
    from data import DEFAULT_CACHE_DIR

    data_flags = f"--data-dir {data} --cache-dir {DEFAULT_CACHE_DIR} --allow-custom-data --no-download"
    assert said == f"interrupted: {out} is saved; its report may be unwritten or an earlier run's: python eval.py " \
                   f"--weights {out} --report-dir {reports} {data_flags}"  # fmt: skip
    assert cli("eval", *said.split("python eval.py ")[1].split()).returncode == 0  # as printed
    assert (reports / "metrics.json").exists()


def test_a_finished_resume_removes_its_resume_file_only_if_no_other_run_wrote_there(cli, tmp_path, monkeypatch):
    """Resume.finished deleted whatever was at the resume file's path when the resumed run ended, also a file another
    run had written there meanwhile. (The other run is simulated: a stop is saved again, under the same name,
    while the evaluation of the resumed one runs.)"""
    import main

    data = write_idx_dir(tmp_path / "mnist")
    common = ["--data-dir", data, *TINY, "--epochs", "2", "--report-dir", tmp_path / "reports"]
    out = tmp_path / "run" / "lenet5.pt"
    resume = out.with_name("lenet5.resume.pt")

    def ctrl_c(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(main, "evaluate", ctrl_c)
        assert cli("main", *common, "--out", out).returncode == 130
    kept = resume.read_bytes()
    evaluate = main.evaluate

    def another_run_saves_there(*args):
        resume.unlink()
        resume.write_bytes(kept)  # another run's file: a new one at that name
        return evaluate(*args)

    with monkeypatch.context() as patched:
        patched.setattr(main, "evaluate", another_run_saves_there)
        done = cli("main", *common, "--resume", resume)
    assert done.returncode == 0 and f"warning: left {resume}: it changed after this run resumed" in done.stderr
    assert resume.read_bytes() == kept and out.exists()


def test_a_closed_pipe_does_not_lose_the_run(tmp_path):
    """`python main.py | grep -m1 "epoch 1/"`: the reader goes away, the run still saves its checkpoint. (With a
    HOME that cannot be written, too: matplotlib then makes a temporary folder, which the exit removes.)"""
    data = write_idx_dir(tmp_path / "mnist", n_train=160)
    out, temporary = tmp_path / "lenet5.pt", tmp_path / "tmp"
    temporary.mkdir()
    command = [sys.executable, "main.py", "--data-dir", str(data), *TINY, "--epochs", "2", "--out", str(out)]
    command += ["--report-dir", str(tmp_path / "reports")]
    env = {**os.environ, "HOME": "/proc/self", "TMPDIR": str(temporary), "MPLCONFIGDIR": ""}
    process = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)  # fmt: skip
    for line in process.stdout:
        if line.startswith("epoch 1/"):
            break
    process.stdout.close()  # what grep -m1 does after its match
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert torch.load(out, weights_only=True)["epoch"] == 2 and out.with_suffix(".json").exists()
    assert "Matplotlib created a temporary cache directory" in stderr and not list(temporary.glob("matplotlib-*"))


# Sends the signal while `import torch` is running, as a Ctrl-C right after pressing Enter (or a
# scheduler's SIGTERM as the job starts) would.
INTERRUPT_DURING_IMPORT = """
import importlib.abc, os, runpy, signal, sys
SIGNAL = getattr(signal, sys.argv[2])
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            os.kill(os.getpid(), SIGNAL)
sys.meta_path.insert(0, Interrupt())
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# Every stop signal for main.py; one each for the other commands (they share cli.py's start-up guard).
STARTS = [("main.py", name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")]
STARTS += [("eval.py", "SIGTERM"), ("predict.py", "SIGHUP"), ("export.py", "SIGQUIT"), ("app.py", "SIGINT")]
STARTS += [("scripts/bench.py", "SIGTERM")]


@pytest.mark.parametrize("script, signal_name", STARTS)
def test_an_interrupt_while_importing_exits_quietly(script, signal_name):
    done = run_script("-c", INTERRUPT_DURING_IMPORT, script, signal_name)
    assert done.returncode == 130 and done.stderr == "" and done.stdout == ""


def run_main_with_file_limit(data, out, reports, size: int) -> subprocess.CompletedProcess:
    """One epoch of main.py in a process whose files may grow to `size` bytes (RLIMIT_FSIZE: a full disk)."""
    flags = ["--data-dir", data, *TINY, "--epochs", "1", "--out", out, "--report-dir", reports]
    spare = Path(out).parent.parent / "spare"  # the system's temporary folder, where a resume file goes last
    spare.mkdir(exist_ok=True)
    limit = limited("RLIMIT_FSIZE", size)
    return run_script("main.py", *map(str, flags), preexec_fn=limit, env={"TMPDIR": str(spare)})


def test_a_disk_that_takes_no_byte_is_one_line_at_the_start(tmp_path):
    """With no byte left (RLIMIT_FSIZE 0, as a full disk), writing the lock's pid was a traceback: one line, the
    run never starts, and no empty lock file is left."""
    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "run" / "lenet5.pt"
    done = run_main_with_file_limit(data, out, tmp_path / "reports", 0)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot write into {out.parent}: file too large; free some space or choose another location"
    ]
    assert not out.parent.exists() and not (tmp_path / "reports").exists()


def test_a_full_disk_at_the_final_save_keeps_the_previous_checkpoint_and_json(tmp_path):
    """Files may grow to 100 kB (RLIMIT_FSIZE; a checkpoint is about 250 kB) everywhere: one line naming the files,
    the cause and what is lost, and the previous lenet5.pt and lenet5.json are untouched, with no temporary file
    beside them."""
    from helper import save_checkpoint
    from LeNet5 import LeNet5

    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "run" / "lenet5.pt"
    previous = {"test_accuracy": 0.5, "epochs": []}  # an earlier run's pair: the one a run may replace
    save_checkpoint(out, {}, {"model": LeNet5().state_dict()}, previous, metrics_json=out.with_suffix(".json"))
    before = out.read_bytes(), out.with_suffix(".json").read_text()
    done = run_main_with_file_limit(data, out, tmp_path / "reports", 100_000)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    unchanged = "File too large; what was there before is unchanged"
    assert done.stderr.startswith(
        f"error: the checkpoint could not be saved (cannot write {out} and {out.with_suffix('.json')}: {unchanged}), "
        f"and the state with training finished could not be saved: cannot write {out.with_name('lenet5.resume.pt')}: "
    )
    assert done.stderr.strip().endswith("the 1 finished epoch(s) of this run are lost")
    assert len(done.stderr.strip().splitlines()) == 1
    assert (out.read_bytes(), out.with_suffix(".json").read_text()) == before
    assert sorted(os.listdir(out.parent)) == ["lenet5.json", "lenet5.pt"]


def test_too_little_memory_to_load_torch_is_one_line():
    done = subprocess.run([sys.executable, "main.py", "--help"], cwd=PROJECT_DIR, capture_output=True, text=True,
                          timeout=120, preexec_fn=limited("RLIMIT_AS", 300_000_000))  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: cannot load the libraries this program needs (")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGQUIT"])
def test_every_stop_signal_saves_the_finished_epochs(cli, tmp_path, monkeypatch, name):
    """Closing the terminal (SIGHUP) or Ctrl-\\ (SIGQUIT) in epoch 2 saves epoch 1 as a Ctrl-C does, exit 130."""
    import train

    place, calls = train.place_batch, []

    def signalled_at_step_9(*args):
        calls.append(1)
        if len(calls) == 9:  # epoch 2 of 6-step epochs
            os.kill(os.getpid(), getattr(signal, name))
        return place(*args)

    monkeypatch.setattr(train, "place_batch", signalled_at_step_9)
    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "run" / "lenet5.pt"
    done = cli("main", "--data-dir", data, *TINY, "--epochs", "3", "--out", out, "--report-dir", tmp_path / "r")
    resume = out.with_name("lenet5.resume.pt")
    assert done.returncode == 130 and f"saved the state after epoch 1 to {resume}" in done.stdout, done.stderr
    assert torch.load(resume, weights_only=True)["train_state"]["epoch"] == 1 and not out.exists()


@pytest.mark.parametrize(
    "out, mine, message",
    [
        ("precious.txt", "precious.txt", "--out {tmp}/precious.txt exists and is not a checkpoint"),
        ("notes.pt", "notes.json", "--out's metrics file {tmp}/notes.json exists and is not a metrics file"),
        ("notes.pt", "notes.resume.pt", "--out's resume file {tmp}/notes.resume.pt exists and is not a checkpoint"),
    ],
)
def test_a_file_of_the_users_is_never_replaced_though_a_run_replaces_its_own(cli, tmp_path, out, mine, message):
    """--out precious.txt replaced a text file with a checkpoint; --out notes.pt, an unrelated notes.json: refused
    before any work, the file as it was. A run's own checkpoint and .json are replaced by the next run, as ever."""
    data = write_idx_dir(tmp_path / "mnist")
    (tmp_path / mine).write_text("the user's own notes")
    args = ["--data-dir", data, *TINY, "--epochs", "1", "--report-dir", tmp_path / "r"]
    done = cli("main", *args, "--out", tmp_path / out)
    assert_user_error(done, message.format(tmp=tmp_path) + " this program wrote; move it or choose another --out")
    assert (tmp_path / mine).read_text() == "the user's own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mnist", mine])
    ours = tmp_path / "run" / "lenet5.pt"
    for _ in range(2):
        done = cli("main", *args, "--out", ours)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in ours.parent.iterdir()) == ["lenet5.json", "lenet5.pt"]


def test_a_name_derived_from_out_that_is_too_long_is_named_before_any_work(cli, tmp_path):
    """--out of 253 bytes is legal; its resume file's name (260 bytes) is not: said at the start, as that."""
    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "o" / ("a" * 250 + ".pt")
    done = cli("main", "--data-dir", data, *TINY, "--out", out, "--report-dir", tmp_path / "r")
    resume = out.with_name("a" * 250 + ".resume.pt")
    assert_user_error(done, f"--out's resume file {resume}: its name is 260 bytes long, and the file system takes")
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]


HOLDS_THE_LOCK = """
import sys
from pathlib import Path
from support.files import OutputPlan
with OutputPlan() as plan:
    plan.lock(Path(sys.argv[1]))
    print("holding", flush=True)
    sys.stdin.read()  # until it is killed
"""


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(cli, tmp_path):
    """Two runs into one --out at once both ended with 0 and left one's checkpoint beside the other's report. The
    output plan's lock: the second is refused at its start, naming the first; once the first is gone, even by
    kill -9, the lock is gone with it."""
    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "run" / "m.pt"
    args = ["--data-dir", data, *TINY, "--epochs", "1", "--out", out, "--report-dir", tmp_path / "r"]
    first = subprocess.Popen([sys.executable, "-c", HOLDS_THE_LOCK, str(out)], cwd=PROJECT_DIR,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert first.stdout.readline() == "holding\n"
        done = cli("main", *args)
        assert_user_error(done, f"another run (pid {first.pid}) is writing {out}; wait for it or choose another --out")
        assert not out.exists() and not (tmp_path / "r").exists()
    finally:
        first.kill()  # SIGKILL: no chance to let go of anything
        first.wait()
    done = cli("main", *args)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out.parent)) == ["m.json", "m.pt"]  # (the lock's file went with the run)


def users_picture(path) -> None:
    """A PNG of the user's own (drawn by PIL, not by this program), at `path`."""
    from PIL import Image

    Image.new("RGB", (40, 30), "orange").save(path)


@pytest.mark.parametrize("name", ["metrics.json", "loss.png", "confusion_matrix.png"])
def test_a_report_folder_keeps_the_users_files_and_takes_its_own(cli, tmp_path, name):
    """--report-dir holding the user's own metrics.json or loss.png: main.py and eval.py replaced them with the
    report's. Refused before any work, the file as it was; a report this program wrote there is replaced by the
    next run, main's by eval's too, whole: the files of the earlier report that the new one does not write are
    removed (eval.py's report beside main.py's training curves described two runs)."""
    data = write_idx_dir(tmp_path / "mnist")
    reports, out = tmp_path / "r", tmp_path / "run" / "m.pt"
    args = ["--data-dir", data, *TINY, "--epochs", "1", "--out", out, "--report-dir", reports]
    for _ in range(2):
        assert cli("main", *args).returncode == 0
    mine = reports / name
    if name.endswith(".json"):
        mine.write_text('{"accuracy": "my own"}')
    else:
        users_picture(mine)
    users = mine.read_bytes()
    evaluate = ["--weights", out, "--data-dir", data, "--allow-custom-data", "--no-download", "--report-dir", reports]
    writers = [("main", args), ("eval", evaluate)]
    for module, given in writers:
        done = cli(module, *given)
        assert_user_error(done, f"--report-dir's {name} {mine} exists and is not ")
        assert "this program wrote; move it or choose another --report-dir" in done.stderr
        assert mine.read_bytes() == users
    mine.unlink()
    assert cli("main", *args).returncode == 0  # (a report whose metrics.json lists its files)
    evaluation = {"metrics.json", "confusion_matrix.png", "misclassified.png", "filters.png", "feature_maps.png"}
    assert cli("eval", *evaluate).returncode == 0 and set(os.listdir(reports)) == evaluation
    assert cli("main", *args).returncode == 0
    assert set(os.listdir(reports)) == {"metrics.json", "confusion_matrix.png", "misclassified.png", "loss.png",
                                        "accuracy.png"}  # fmt: skip


def test_the_files_written_are_listed_one_per_line_whatever_their_names(cli, tmp_path):
    """`--out $'m\\nx.pt'` split the "wrote:" list over two lines: a name with a line break is shown escaped."""
    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "m\nx.pt"
    done = cli("main", "--data-dir", data, *TINY, "--epochs", "1", "--out", out, "--report-dir", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("wrote:\n", 1)[1].splitlines()
    assert listed[:2] == [f"  {tmp_path}/m\\nx.pt", f"  {tmp_path}/m\\nx.json"] and out.is_file()
