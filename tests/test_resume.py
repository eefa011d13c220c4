"""resume.py: a resume file is whole or refused, checked before any training; saving one never loses
what was there; a finished run removes it only once its checkpoint is safe."""

import contextlib
import copy
import errno
import importlib
import io
import os
import pathlib
import shlex
import shutil
import signal
import tempfile
from pathlib import Path

from support.cli import run_cli

import pytest
import torch
from conftest import TINY, Finished, assert_user_error, write_idx_dir

from helper import state_digest


def interrupt_at_step(monkeypatch, step: int) -> None:
    """A real SIGINT when training reaches `step` (counted over all epochs)."""
    import train

    place, calls = train.place_batch, []

    def counting(*args):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return place(*args)

    monkeypatch.setattr(train, "place_batch", counting)


def interrupt_a_run(cli, tmp_path, monkeypatch, *flags: str):
    """A 3-epoch run (6 steps an epoch) stopped by Ctrl-C in epoch 2: its resume file holds epoch 1."""
    data = write_idx_dir(tmp_path / "mnist")
    common = ["--data-dir", str(data), *TINY, *flags, "--epochs", "3", "--report-dir", str(tmp_path / "reports")]
    out = tmp_path / "run" / "lenet5.pt"
    with monkeypatch.context() as patched:
        interrupt_at_step(patched, 9)
        done = cli("main", *common, "--out", out)
    assert done.returncode == 130 and "saved the state after epoch 1" in done.stdout, done.stderr
    return common, out, out.with_name("lenet5.resume.pt")


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory):
    """interrupt_a_run once per optimizer for the whole file; each test that damages one gets a copy of its file."""
    made = {}

    def run(optimizer: str) -> tuple[list[str], Path]:
        if optimizer not in made:
            folder = tmp_path_factory.mktemp(f"interrupted-{optimizer}")
            with pytest.MonkeyPatch.context() as patch:
                common, _, resume = interrupt_a_run(in_process, folder, patch, "--optimizer", optimizer)
            made[optimizer] = common, resume
        return made[optimizer]

    return run


def in_process(module: str, *args) -> Finished:
    """conftest's `cli` fixture, for a module-scoped fixture (which cannot take a function-scoped one)."""
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            run_cli(importlib.import_module(module).main, [str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return Finished(code, out.getvalue(), err.getvalue())


def copy_of(run: tuple[list[str], Path], tmp_path: Path) -> tuple[list[str], Path, Path]:
    """(flags, --out, resume file): a copy of an interrupted run's resume file, beside this test's own --out."""
    common, saved = run
    resume = tmp_path / "run" / "lenet5.resume.pt"
    resume.parent.mkdir()
    shutil.copy(saved, resume)
    return common, resume.with_name("lenet5.pt"), resume


@pytest.fixture
def interrupted(interrupted_runs, tmp_path):
    return copy_of(interrupted_runs("sgd"), tmp_path)


def sealed(checkpoint: dict) -> dict:
    """The checkpoint with its digest made anew: damage that the code writing it could have done itself."""
    return {**checkpoint, "digest": state_digest(checkpoint)}


def momentum_swapped(state: dict) -> None:
    buffers = state["optimizer"]["state"]
    buffers[0], buffers[1] = buffers[1], buffers[0]


DAMAGE = {
    "five epochs in the history": (
        lambda s: s["history"].update(epochs=s["history"]["epochs"] * 5),
        "its history records 5 epochs where it says 1 are done",
    ),
    "an empty history": (lambda s: s["history"].update(epochs=[]), "its history records 0 epochs where it says 1"),
    "the schedule far ahead": (
        lambda s: s["scheduler"].update(last_epoch=10**9),
        "its learning-rate schedule is at step 1000000000, not 6",
    ),
    "two momentum buffers swapped": (
        momentum_swapped,
        "its optimizer's momentum_buffer for parameter 0 does not have that parameter's shape",
    ),
    "two parameter groups": (
        lambda s: s["optimizer"]["param_groups"].append(dict(s["optimizer"]["param_groups"][0])),
        "its optimizer has 2 parameter group(s)",
    ),
    "a 7-byte generator state": (
        lambda s: s["rng"].update(torch=[torch.zeros(7, dtype=torch.uint8)]),
        "its torch random generator state is damaged",
    ),
    "a step loss missing": (lambda s: s["history"]["step_losses"].pop(), "holds 5 step losses for 1 epochs of 6 steps"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_an_inconsistent_resume_file_is_refused_before_training(cli, interrupted, kind):
    common, out, resume = interrupted
    edit, message = DAMAGE[kind]
    checkpoint = torch.load(resume, weights_only=True)
    edit(checkpoint["train_state"])
    torch.save(sealed(checkpoint), resume)
    before = resume.read_bytes()
    done = cli("main", *common, "--out", out, "--resume", resume)
    assert_user_error(done, message)
    assert "epoch 2/3" not in done.stdout and resume.read_bytes() == before and not out.exists()


def drop(container: dict, key) -> None:
    del container[key]


MUON_DAMAGE = {  # the settings and buffers Muon adds, and those any optimizer's state may lose
    "a setting missing": (lambda o: drop(o["param_groups"][0], "ns_steps"), "settings (ns_steps) are not its recipe's"),
    "a setting changed": (lambda o: o["param_groups"][1].update(maximize=True), "settings (maximize) are not its"),
    "a buffer missing": (
        lambda o: drop(o["state"][0], "momentum_buffer"),
        "its optimizer's state for parameter 0 holds [], not ['momentum_buffer']",
    ),
    "a parameter's state missing": (lambda o: drop(o["state"], 2), "holds state for 9 parameters, not 10"),
    "a step count as an int": (
        lambda o: o["state"][2].update(step=3),
        "its optimizer's step for parameter 2 does not have that parameter's shape",
    ),
}


@pytest.mark.parametrize("kind", MUON_DAMAGE)
def test_a_muon_resume_file_is_refused_when_damaged(cli, interrupted_runs, tmp_path, kind):
    common, out, resume = copy_of(interrupted_runs("muon"), tmp_path)
    checkpoint = torch.load(resume, weights_only=True)
    MUON_DAMAGE[kind][0](checkpoint["train_state"]["optimizer"])
    torch.save(sealed(checkpoint), resume)
    assert_user_error(cli("main", *common, "--out", out, "--resume", resume), MUON_DAMAGE[kind][1])


def test_a_resume_file_changed_after_saving_is_refused(cli, interrupted):
    common, out, resume = interrupted
    checkpoint = torch.load(resume, weights_only=True)
    checkpoint["state_dict"]["c1.bias"] += 1e-3  # a flipped bit's worth of damage, the digest left as it was
    torch.save(checkpoint, resume)
    done = cli("main", *common, "--out", out, "--resume", resume)
    assert_user_error(done, "its contents changed after it was saved (the digest written with it does not match)")


def test_the_resume_file_stays_until_the_finished_checkpoint_is_safe(cli, interrupted, monkeypatch):
    common, out, resume = interrupted
    write_bytes = pathlib.Path.write_bytes

    def disk_full_for_the_checkpoint(self, data):
        if self.name.startswith(".lenet5.pt."):  # the finished checkpoint's temporary file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    with monkeypatch.context() as patched:
        patched.setattr(pathlib.Path, "write_bytes", disk_full_for_the_checkpoint)
        done = cli("main", *common, "--out", out, "--resume", resume)
    failed = f"the checkpoint could not be saved (cannot write {out} and {out.with_suffix('.json')}: No space left"
    assert done.returncode == 1 and done.stderr.startswith(f"error: {failed}") and "Traceback" not in done.stderr
    assert f"; saved the state with training finished to {resume}; continue with: " in done.stderr  # (its own file)
    assert resume.exists() and not out.exists() and not out.with_suffix(".json").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["lenet5.resume.pt"]  # no temporary file left
    finished = cli("main", *common, "--out", out, "--resume", resume)
    assert finished.returncode == 0 and "3 of 3 epochs done, nothing left to train" in finished.stdout
    assert not resume.exists() and out.exists()


@pytest.mark.parametrize("spare_full", [False, True], ids=["spare", "nowhere"])
def test_a_stop_where_the_resume_file_cannot_be_written_saves_it_in_the_temporary_folder(
    cli, tmp_path, monkeypatch, spare_full
):
    """--out's disk is full when Ctrl-C comes: the state goes to the system's temporary folder, and the command it
    prints finishes the run at --out; where that disk is full too, one line says what is lost. (A long name, since
    the name in the temporary folder is longer than the resume file's.)"""
    data = write_idx_dir(tmp_path / "mnist")
    out, spare = tmp_path / "run" / ("a" * 240 + ".pt"), tmp_path / "spare"
    spare.mkdir()
    full, write_bytes = {out.parent, spare} if spare_full else {out.parent}, pathlib.Path.write_bytes

    def disk_full(self, data):
        if self.parent in full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    with monkeypatch.context() as patched:
        interrupt_at_step(patched, 15)  # in epoch 3: two epochs finished
        patched.setattr(pathlib.Path, "write_bytes", disk_full)
        patched.setattr(tempfile, "tempdir", str(spare))
        done = cli("main", "--data-dir", data, *TINY, "--epochs", "3", "--out", out, "--report-dir", tmp_path / "r")
    beside = f"cannot write {out.with_name('a' * 240 + '.resume.pt')}: No space left on device"
    if spare_full:
        assert_user_error(done, f"interrupted, and the state after epoch 2 could not be saved: {beside}")
        assert f"; nor in {spare}: cannot write {spare}" in done.stderr
        assert done.stderr.strip().endswith("the 2 finished epoch(s) of this run are lost")
        assert not list(spare.glob("*.resume.pt")) and not out.parent.exists()
        return
    (saved,) = spare.glob("*.resume.pt")
    assert done.returncode == 130 and f"saved the state after epoch 2 to {saved} instead of beside the checkpoint " \
                                      f"({beside}" in done.stdout, done.stderr  # fmt: skip
    said = next(line for line in done.stdout.splitlines() if line.startswith("continue with: "))
    resumed = cli("main", *shlex.split(said)[4:])
    assert resumed.returncode == 0 and "2 of 3 epochs done, continuing" in resumed.stdout, resumed.stderr
    assert out.exists() and not saved.exists()


def test_another_runs_resume_file_put_beside_out_during_the_run_is_kept_at_a_stop(
    cli, interrupted, tmp_path, monkeypatch
):
    """Another run's resume file, copied beside --out while this run trains, was replaced by this run's state at
    a stop (the start refuses the same file): it is kept, and this run's state goes to the temporary folder."""
    import train

    common, _, theirs = interrupted
    out, spare = tmp_path / "mine" / "lenet5.pt", tmp_path / "spare"
    spare.mkdir()
    place, calls = train.place_batch, []

    def copied_in_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 3:
            shutil.copy(theirs, out.with_name("lenet5.resume.pt"))
        if len(calls) == 9:  # in epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return place(*args)

    with monkeypatch.context() as patched:
        patched.setattr(train, "place_batch", copied_in_then_ctrl_c)
        patched.setattr(tempfile, "tempdir", str(spare))
        done = cli("main", *common, "--out", out)
    (saved,) = spare.glob("*.resume.pt")
    kept = f"{out.with_name('lenet5.resume.pt')} appeared while this run trained, and is kept: move it before"
    assert done.returncode == 130, done.stderr
    assert f"saved the state after epoch 1 to {saved} instead of beside the checkpoint ({kept}" in done.stdout
    assert out.with_name("lenet5.resume.pt").read_bytes() == theirs.read_bytes()


def test_a_resume_file_another_run_already_removed_is_no_warning(cli, interrupted, monkeypatch):
    """Two runs resumed one file into two --outs at once: the second to finish warned that the file "changed"
    and was "left", though the first had removed it."""
    import main

    common, out, resume = interrupted
    evaluate = main.evaluate

    def the_other_run_finished_first(*args):
        resume.unlink()
        return evaluate(*args)

    monkeypatch.setattr(main, "evaluate", the_other_run_finished_first)
    done = cli("main", *common, "--resume", resume)
    assert done.returncode == 0 and out.exists() and "warning" not in done.stderr, done.stderr


def test_a_new_run_into_an_out_whose_resume_file_waits_is_refused(cli, interrupted):
    """An unrelated run into the same --out, stopped in turn, replaced the interrupted run's only copy: it is refused
    at its start, naming the way to continue the one that waits."""
    common, out, resume = interrupted
    kept = resume.read_bytes()
    done = cli("main", *common, "--out", out, "--seed", "1")
    assert_user_error(done, f"{resume} holds an interrupted run that a stop of this one would replace; continue it "
                            f"with --resume {resume}, or move it to train anew")  # fmt: skip
    assert resume.read_bytes() == kept and sorted(os.listdir(out.parent)) == ["lenet5.resume.pt"]


def test_a_resume_file_named_through_a_symlink_finishes_beside_its_target(cli, interrupted, tmp_path):
    """--resume through a link wrote link.pt and removed only the link, leaving the real resume file behind."""
    common, out, resume = interrupted
    link = tmp_path / "link.resume.pt"
    link.symlink_to(resume)
    done = cli("main", *common, "--resume", link)
    assert done.returncode == 0 and "resuming " + str(resume) in done.stdout, done.stderr
    assert out.exists() and not resume.exists() and not (tmp_path / "link.pt").exists()


def test_adam_and_a_weight_average_resume_only_when_whole(cli, tmp_path, monkeypatch):
    """The Adam moments and the average's update count are checked like SGD's momentum and the schedule."""
    data = write_idx_dir(tmp_path / "mnist")
    common = ["--data-dir", str(data), *TINY, "--epochs", "3", "--report-dir", str(tmp_path / "reports")]
    common += ["--optimizer", "adam", "--ema-decay", "0.9"]
    out = tmp_path / "run" / "lenet5.pt"
    with monkeypatch.context() as patched:
        interrupt_at_step(patched, 9)
        assert cli("main", *common, "--out", out).returncode == 130
    resume = out.with_name("lenet5.resume.pt")
    saved = torch.load(resume, weights_only=True)
    for edit, message in [
        (lambda s: s["average"].update(updates=7), "its weight average has 7 updates, not 6"),
        (momentum_swapped, "its optimizer's exp_avg for parameter 0 does not have that parameter's shape"),
        (lambda s: s.pop("average"), "its weight average does not match its recipe's --ema-decay"),
    ]:
        damaged = copy.deepcopy(saved)
        edit(damaged["train_state"])
        torch.save(sealed(damaged), resume)
        assert_user_error(cli("main", *common, "--out", out, "--resume", resume), message)
    torch.save(saved, resume)
    assert cli("main", *common, "--out", out, "--resume", resume).returncode == 0
    assert torch.load(out, weights_only=True)["train_state"]["average"]["updates"] == 18  # 3 epochs of 6 steps


def test_a_resume_file_that_cannot_be_removed_is_a_warning_after_the_save(cli, interrupted, monkeypatch):
    """A resume file in a folder that cannot be written: the finished checkpoint is saved elsewhere, the report is
    written, and the file that could not be removed is one warning (it was a traceback before the report)."""
    common, _, resume = interrupted
    out = resume.parent.parent / "elsewhere" / "lenet5.pt"
    unlink = pathlib.Path.unlink

    def read_only(self, *args, **kwargs):
        if self == resume:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    done = cli("main", *common, "--out", out, "--resume", resume)
    assert done.returncode == 0 and out.exists() and resume.exists(), done.stderr
    assert (
        done.stderr.startswith(f"warning: removing {resume} (delete it yourself) failed")
        and "Traceback" not in done.stderr
    )
    assert "Accuracy of the network on test images" in done.stdout


def test_a_resumed_run_writes_a_pt_beside_its_resume_file():
    """Its default --out: where the interrupted run would have written; a resume file renamed (f.png, say) gives
    a .pt of its name, never a checkpoint under a picture's name."""
    from extras.resume import finished_path

    assert finished_path(Path("runs/x/lenet5.resume.pt")) == Path("runs/x/lenet5.pt")
    assert finished_path(Path("/tmp/f.png")) == Path("/tmp/f.pt")
    assert finished_path(Path("saved")) == Path("saved.pt")
    assert finished_path(Path("lenet5.pt")) == Path("lenet5.pt")  # continued in place


def test_the_1998_recipe_resumes_to_the_same_weights(cli, tmp_path, monkeypatch):
    """SDLM keeps no state between passes (its curvature is estimated anew at each pass's start), so a resume
    file made at a pass's end goes on exactly as the uninterrupted run."""
    common, out, resume = interrupt_a_run(cli, tmp_path, monkeypatch, "--recipe", "lecun1998")
    assert cli("main", *common, "--out", out, "--resume", resume).returncode == 0
    whole = tmp_path / "whole" / "lenet5.pt"
    assert cli("main", *common, "--out", whole).returncode == 0
    resumed, uninterrupted = (torch.load(p, weights_only=True)["state_dict"] for p in (out, whole))
    assert resumed.keys() == uninterrupted.keys() and "output.centres" in resumed
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_a_resumed_run_reports_beside_its_checkpoint_not_into_the_projects_reports(cli, interrupted, monkeypatch):
    """`main.py --resume runs/x/lenet5.resume.pt` alone wrote its report into the project's reports/, over the
    default run's: it goes into runs/x/reports/, beside the checkpoint it finishes."""
    import main

    common, out, resume = interrupted
    projects = out.parent.parent / "projects-reports"
    monkeypatch.setattr(main, "REPORT_DIR", projects)
    flags = common[: common.index("--report-dir")]
    done = cli("main", *flags, "--resume", resume)
    assert done.returncode == 0, done.stderr
    assert (out.parent / "reports" / "metrics.json").is_file() and not projects.exists()
