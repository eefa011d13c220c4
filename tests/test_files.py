"""support/files.py: outputs planned before any work, written atomically, JSON written one way."""

import json
import os
import stat
import threading

from support.cli import UserError

import pytest

from support.files import (
    Kind,
    OutputPlan,
    atomic_outputs,
    atomic_torch_save,
    check_output_dir,
    check_output_file,
    json_text,
    new_folder,
    remove_if_empty,
    write_json,
)

ANY = Kind("a file", lambda path: True)  # (these tests are about where outputs may go, not what may be replaced)


def test_output_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="is a directory; give a file name"):
        check_output_file(tmp_path / "folder", "--out", kind=None)
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_file(tmp_path / "file" / "x.pt", "--out", kind=None)
    with pytest.raises(UserError, match="cannot create"):
        check_output_dir(tmp_path / "file" / "deeper" / "reports", "--report-dir")
    check_output_file(tmp_path / "new" / "x.pt", "--out", kind=None)
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "x.pt").exists()
    os.mkfifo(tmp_path / "fifo")
    for check in (lambda path: check_output_file(path, "--out", kind=None), lambda path: write_json({}, path)):
        with pytest.raises(UserError, match="is not a regular file"):
            check(tmp_path / "fifo")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)  # still the pipe, not replaced by a file


def test_a_plan_refuses_outputs_that_collide_with_each_other_or_an_input(tmp_path):
    plan = OutputPlan({"the checkpoint given as --weights": tmp_path / "model.pt"})
    with pytest.raises(UserError, match="is the checkpoint given as --weights, which this command reads"):
        plan.file(tmp_path / "model.pt", "--out", kind=None)
    plan.file(tmp_path / "reports" / "loss.png", "--out", kind=None)
    with pytest.raises(UserError, match=r"--report-dir's loss.png .* is also --out: one would replace the other"):
        plan.folder(tmp_path / "reports", "--report-dir", {"metrics.json": ANY, "loss.png": ANY})
    plan.whole_folder(tmp_path / "hub", "--hub")
    with pytest.raises(UserError, match="overlap, one inside the other"):
        plan.file(tmp_path / "hub" / "config.json", "--other", kind=None)
    with pytest.raises(UserError, match="is also --out"):  # the same file by another path
        plan.file(tmp_path / "reports" / ".." / "reports" / "loss.png", "--figure", kind=None)


def test_a_symlinked_output_is_written_through(tmp_path):
    (tmp_path / "target.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    write_json({"a": 1}, tmp_path / "link.json")
    assert (tmp_path / "link.json").is_symlink() and json.loads((tmp_path / "target.json").read_text()) == {"a": 1}


def test_atomic_save_leaves_old_file_intact_on_failure(tmp_path):
    import torch

    path = tmp_path / "x.pt"
    atomic_torch_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"v": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.pt"]  # no temp file left behind


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "a.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_json_is_strict_with_nan_as_null(tmp_path):
    value = {"accuracy": float("nan"), "per_class": [0.5, float("inf"), None], "path": tmp_path}
    write_json(value, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"accuracy": None, "per_class": [0.5, None, None], "path": str(tmp_path)}
    assert "NaN" not in text and "Infinity" not in text and json_text(value) == text


def test_two_writers_of_one_pair_never_mix_their_files(tmp_path, monkeypatch):
    """Writer a has renamed its checkpoint and not yet its .json when writer b comes to replace the same pair.
    b must wait for a's second rename (the folder's lock); without the lock, b's renames would come between
    a's two and leave b's checkpoint beside a's .json."""
    pair = tmp_path / "lenet5.pt", tmp_path / "lenet5.json"
    a_halfway, b_renaming = threading.Event(), threading.Event()
    replace = os.replace

    def watched(source, target):
        replace(source, target)
        if threading.current_thread().name == "a" and target == pair[0]:
            a_halfway.set()
            b_renaming.wait(timeout=1.0)  # b, if it is not kept waiting, renames its pair now
        if threading.current_thread().name == "b":
            b_renaming.set()

    monkeypatch.setattr(os, "replace", watched)

    def writer() -> None:
        if threading.current_thread().name == "b":
            a_halfway.wait(timeout=10)
        with atomic_outputs(*pair) as temps:
            for tmp in temps:
                tmp.write_text(threading.current_thread().name)

    threads = [threading.Thread(target=writer, name=name) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {path.read_text() for path in pair} == {"b"}  # one writer's pair: b's, which came second
    assert sorted(os.listdir(tmp_path)) == ["lenet5.json", "lenet5.pt"]


def test_a_folder_output_may_not_be_where_a_file_goes(tmp_path):
    """--tensorboard is a folder: made where --out or a report file goes, the run failed only at its end."""
    plan = OutputPlan()
    plan.file(tmp_path / "t" / "m.pt", "--out", kind=None)
    with pytest.raises(UserError, match=r"--tensorboard .*m.pt is also --out: one would replace the other"):
        plan.folder(tmp_path / "t" / "m.pt", "--tensorboard")
    plan.folder(tmp_path / "rep", "--report-dir", {"loss.png": ANY})
    with pytest.raises(UserError, match=r"--tensorboard .*loss.png is also --report-dir's loss.png"):
        plan.folder(tmp_path / "rep" / "loss.png", "--tensorboard")
    with pytest.raises(UserError, match="overlap, one inside the other"):  # nothing can be made inside a file
        plan.folder(tmp_path / "t" / "m.pt" / "tb", "--tensorboard")
    plan.folder(tmp_path / "t", "--tensorboard")  # a folder that holds other outputs is fine: its runs are new folders
    assert not (tmp_path / "t" / "m.pt").exists() and not (tmp_path / "rep" / "loss.png").exists()


def test_an_input_is_never_an_output_nor_inside_a_folder_written_whole(tmp_path):
    plan = OutputPlan({"the data file x": tmp_path / "data" / "x"})
    with pytest.raises(UserError, match="is the data file x, which this command reads"):
        plan.folder(tmp_path / "data" / "x", "--tensorboard")
    with pytest.raises(UserError, match="which this command reads, overlap"):
        plan.whole_folder(tmp_path / "data", "--out")
    plan.folder(tmp_path / "data", "--report-dir", {"metrics.json": ANY})  # written into, beside the input: fine


def test_a_plan_leaves_no_folder_behind(tmp_path):
    """The folders are made to check them, then removed: a run refused later (or stopped before it writes)
    leaves no empty folder; the writers make them with the first file."""
    plan = OutputPlan()
    plan.file(tmp_path / "new" / "deeper" / "m.pt", "--out", kind=None)
    plan.folder(tmp_path / "reports" / "run", "--report-dir", {"metrics.json": ANY})
    assert os.listdir(tmp_path) == []
    write_json({}, tmp_path / "reports" / "run" / "metrics.json")
    assert (tmp_path / "reports" / "run" / "metrics.json").is_file()


def test_new_folders_are_never_shared(tmp_path):
    """Two runs started in the same second ask for the same name: each gets a folder of its own."""
    first = new_folder(tmp_path / "runs" / "20260101-000000_default-seed0", "the run's folder")
    second = new_folder(tmp_path / "runs" / "20260101-000000_default-seed0", "the run's folder")
    assert first.is_dir() and second.is_dir() and second.name == "20260101-000000_default-seed0-2"
    (second / "lenet5.pt").write_text("written")
    remove_if_empty(first)
    remove_if_empty(second)
    assert sorted(os.listdir(tmp_path / "runs")) == [second.name]


def test_a_read_only_file_system_is_named(tmp_path):
    """os.access says yes to root on a read-only mount; creating a file there tells the cause. A real
    read-only tmpfs, mounted in a mount namespace of its own (root only: skipped elsewhere)."""
    import shutil
    import subprocess
    import sys

    from support.cli import PROJECT_DIR

    (tmp_path / "ro").mkdir()
    code = "import sys, pathlib, support.files as f; f.OutputPlan().file(pathlib.Path(sys.argv[1]), '--out', kind=None)"
    mounted = 'mount -t tmpfs -o ro tmpfs "$1" && exec "$2" -c "$3" "$1/m.pt"'
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (root) for a read-only mount")
    command = ["unshare", "-m", "sh", "-c", mounted, "sh", tmp_path / "ro", sys.executable, code]
    done = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True)
    assert "the folder of --out: cannot write into" in done.stderr and "read-only file system" in done.stderr


def test_a_name_too_long_is_refused_with_its_flag_before_any_work(tmp_path):
    """300 bytes where the file systems take 255: one line naming the flag and the path, not the system's
    ENAMETOOLONG as a traceback; a name derived from --out (its resume file) is named as that."""
    plan = OutputPlan()
    long = tmp_path / "new" / ("a" * 297 + ".pt")
    with pytest.raises(UserError, match=r"^--out .*/a{297}\.pt: its name is 300 bytes long, and the file system takes"):
        plan.file(long, "--out", kind=None)
    legal = tmp_path / ("b" * 250 + ".pt")  # 253 bytes: fine; its resume file's 260 are not
    plan.file(legal, "--out", kind=None)
    with pytest.raises(UserError, match=r"^--out's resume file .*/b{250}\.resume\.pt: its name is 260 bytes long"):
        plan.file(legal.with_name(legal.stem + ".resume.pt"), "--out's resume file", kind=None)
    with pytest.raises(UserError, match=r"^--report-dir .*: the folder name a{12}\.\.\.a{12} in it is 300 bytes"):
        plan.folder(tmp_path / ("a" * 300) / "reports", "--report-dir", {"metrics.json": ANY})
    assert os.listdir(tmp_path) == []


def test_a_name_of_255_bytes_is_written_though_its_temporary_name_is_longer(tmp_path):
    """The temporary file beside a target is named after it, with 14 more bytes: cut, it stays within 255."""
    path = tmp_path / ("a" * 250 + ".json")
    write_json({"a": 1}, path)
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == [path.name]


def test_a_file_there_is_replaced_only_when_this_program_wrote_it(tmp_path):
    """An output of a Kind replaces an earlier one of this program's; a file of the user's that only has its name
    is refused, whatever it holds, and stays as it was."""
    from support.files import Kind

    kind = Kind("a note", lambda path: path.read_text() == "written by this program")
    (tmp_path / "ours.txt").write_text("written by this program")
    (tmp_path / "mine.txt").write_text("the user's own notes")
    plan = OutputPlan()
    plan.file(tmp_path / "ours.txt", "--out", kind=kind)
    plan.file(tmp_path / "new.txt", "--out", kind=kind)
    message = r"^--out .*/mine.txt exists and is not a note this program wrote; move it or choose another --out$"
    with pytest.raises(UserError, match=message):
        plan.file(tmp_path / "mine.txt", "--out", kind=kind)
    assert (tmp_path / "mine.txt").read_text() == "the user's own notes"


def test_a_file_put_at_a_planned_name_while_the_command_runs_is_kept(tmp_path):
    """The plan's check is made again at the rename: a file of the user's that appears at an output's name after the
    start is kept, and none of a set is written; one of this program's is replaced (the user's file went before)."""
    kind = Kind("a note", lambda path: path.read_text() == "written by this program")
    note, other = tmp_path / "note.txt", tmp_path / "other.txt"
    with OutputPlan() as plan:
        plan.file(note, "--out", kind=kind)
        plan.file(other, "--out's other", kind=kind)
        note.write_text("the user's own notes")  # after the check
        message = rf"^{note} was put there or changed while this command ran, and is not a note this program wrote"
        with pytest.raises(UserError, match=message):
            with atomic_outputs(other, note) as temps:
                for tmp in temps:
                    tmp.write_text("new")
        assert note.read_text() == "the user's own notes" and not other.exists()
        assert sorted(os.listdir(tmp_path)) == ["note.txt"]  # no temporary file left
        note.write_text("written by this program")
        with atomic_outputs(note) as (tmp,):
            tmp.write_text("new")
    assert note.read_text() == "new"


@pytest.mark.parametrize("where", ["the file", "its folder"])
def test_a_link_put_at_a_planned_name_while_the_command_runs_is_not_written_through(tmp_path, where):
    """A link that appears at an output's name, or in the place of its folder, after the plan's check: the file it
    leads to (the user's) was replaced, since a write goes through links; now nothing is written."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "loss.png").write_text("the user's own figure")
    out = tmp_path / "reports" / "loss.png"
    with OutputPlan() as plan:
        plan.folder(out.parent, "--report-dir", {"loss.png": ANY})
        link = out if where == "the file" else out.parent  # (the one the line names: removing it loses nothing)
        if where == "the file":
            out.parent.mkdir()
            out.symlink_to(mine / "loss.png")
        else:
            out.parent.symlink_to(mine)
        message = f"^{link} became a link to {link.resolve()} while this command ran: nothing was written through it"
        with pytest.raises(UserError, match=message):
            write_json({"a": 1}, out)
    assert (mine / "loss.png").read_text() == "the user's own figure" and sorted(os.listdir(mine)) == ["loss.png"]


def test_a_folder_that_becomes_a_link_while_its_file_is_written_is_the_link_named(tmp_path):
    """The swap lands after the write began (its temporary file made): the line named the user's file at the link's
    end ("move it"), not the link."""
    mine, out = tmp_path / "mine", tmp_path / "o" / "p.png"
    mine.mkdir()
    (mine / "p.png").write_text("the user's own")
    with OutputPlan() as plan:
        plan.file(out, "--out", kind=ANY)
        message = f"^{out.parent} became a link to {mine} while this command ran: nothing was written through it"
        with pytest.raises(UserError, match=message):
            with atomic_outputs(out) as (tmp,):
                out.parent.rename(tmp_path / "o_moved")
                out.parent.symlink_to(mine)
                tmp.write_text("new")  # (through the link)
    assert (mine / "p.png").read_text() == "the user's own" and os.listdir(mine) == ["p.png"]


def test_a_folder_named_through_a_link_and_dot_dot_is_the_one_the_system_makes(tmp_path):
    """`--report-dir lnk/../rep` is lnk's target's sibling for the system (mkdir makes it there), but mkstemp reads the
    name without the link (rep beside lnk): the writable check said "no such file or directory"."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "a" / "b")
    check_output_dir(tmp_path / "lnk" / ".." / "rep", "--report-dir")
    assert (tmp_path / "a" / "rep").is_dir()


def test_a_name_too_long_to_write_is_a_user_error_naming_it(tmp_path):
    """(It was a raw OSError from the check before the write, which a caller that keeps work on a failed write
    did not catch.)"""
    with pytest.raises(UserError, match="^cannot write .*a{300}: File name too long"):
        write_json({}, tmp_path / ("a" * 300))


def test_a_lock_holds_an_output_for_one_command_and_is_let_go_on_every_way_out(tmp_path):
    """A second plan locking the same output is refused, naming the process that holds it; the lock goes with
    the plan's block however it ends (here a Ctrl-C), and leaves no file behind, nor the folder made for it."""
    out = tmp_path / "new" / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        with OutputPlan() as plan:
            plan.lock(out)
            with pytest.raises(UserError, match=rf"^another run \(pid {os.getpid()}\) is writing {out}; wait for it"):
                OutputPlan().lock(out)
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with OutputPlan() as again:
        again.lock(out)  # free again
        out.write_text("written")
    assert os.listdir(out.parent) == ["m.pt"]


@pytest.mark.parametrize("what", ["notes", "folder", "link", "empty", "stale"])
def test_the_lock_takes_only_a_lock_files_name_of_its_own(tmp_path, what):
    """The lock beside --out m.pt is .m.pt.lock. A user's file of that name was deleted when the run ended, and a
    folder there silently left the run unlocked: both refused now, left as they were. A lock file of a killed
    run (its pid inside) or one just created (empty) is this program's, and is taken."""
    out, lock = tmp_path / "m.pt", tmp_path / ".m.pt.lock"
    if what == "notes":
        lock.write_text("my notes\n")
    elif what == "folder":
        lock.mkdir()
    elif what == "link":
        lock.symlink_to(tmp_path / "elsewhere")
    else:
        lock.write_text("" if what == "empty" else "4194305\n")
    if what in ("empty", "stale"):
        with OutputPlan() as plan:
            plan.lock(out)
            assert lock.read_text() == f"{os.getpid()}\n"
        assert not lock.exists()
        return
    with pytest.raises(UserError, match=rf"^{lock} \((a file|a folder|a link)\) is in the way of the lock .* move it$"):
        OutputPlan().lock(out)
    left = {"link": lock.is_symlink, "folder": lock.is_dir, "notes": lambda: lock.read_text() == "my notes\n"}
    assert left[what]()


def test_a_failed_write_leaves_no_folder_it_made(tmp_path):
    """`eval.py --report-dir a/b/c` on a full disk left a, a/b and a/b/c empty behind its one-line error."""
    import errno

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "kept.txt").write_text("the user's")
    targets = [tmp_path / "a" / "b" / "c" / name for name in ("metrics.json", "loss.png")]
    with pytest.raises(UserError, match="loss.png: No space left on device; what was there before is unchanged"):
        with atomic_outputs(*targets):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["kept.txt"]
