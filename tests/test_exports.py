"""export.py and extras/exports.py: every format written, proven in its own runtime, then moved into place;
a failed check, a full disk or a wrong --out leaves what was there."""

import contextlib
import errno
import json
import stat
from pathlib import Path

import onnxruntime
import pytest
import torch
from conftest import assert_user_error

from extras.exports import run_torchscript


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_is_verified_in_its_runtime(tmp_path, weights, tiny_model, fmt, cli):
    out = tmp_path / f"model.{fmt}"
    no_mnist = ["--data-dir", tmp_path / "no-mnist", "--cache-dir", tmp_path / "no-cache", "--no-download"]
    no_mnist += ["--verify-images", "9"]  # (a checkout that trained before has a cache in data/processed)
    done = cli("export", "--weights", weights, "--format", fmt, "--out", out, *no_mnist)
    assert done.returncode == 0, done.stderr
    assert "verifying on synthetic images instead" in done.stdout and "argmax identical" in done.stdout
    sidecar = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    check = sidecar["verification"]
    assert check["argmax_identical"] and check["max_abs_logit_diff"] <= 1e-4 and check["images"] == 9
    assert sidecar["input"]["shape"] == ["batch", 1, 32, 32] and sidecar["mean"] == 0.1307
    assert sidecar["test_accuracy"] == 0.5  # from the checkpoint's metrics
    assert stat.S_IMODE(out.stat().st_mode) & 0o044  # readable by others, like any file the user makes

    # Independently of export.verify: another batch size, straight through the runtime.
    x = torch.randn(5, 1, 32, 32)
    expected = tiny_model.eval()(x).detach()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    else:
        got = run_torchscript(out, x)
    assert got.shape == (5, 10)
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("fmt, name", [("torchscript", "m.torchscript.pt"), ("hub", "hub")])
def test_a_full_disk_keeps_the_previous_export(tmp_path, weights, cli, fmt, name):
    """Files may grow to 100 kB (RLIMIT_FSIZE; the weights alone are 240 kB): one line naming what was asked
    for, and the previous export is untouched, with no temporary file or folder beside it. (TorchScript's
    own C++ writer aborted the process here; safetensors' Rust writer raised a traceback.)"""
    out = tmp_path / name
    args = ["--weights", weights, "--format", fmt, "--out", out, "--verify-images", "4"]
    no_data = ["--data-dir", tmp_path / "no-mnist", "--no-download"]
    assert cli("export", *args, *no_data).returncode == 0  # the previous export
    previous = {path: path.read_bytes() for path in ([out] if out.is_file() else out.iterdir())}
    with file_size_limit(100_000):  # (Python ignores SIGXFSZ: an over-long write fails with EFBIG)
        done = cli("export", *args, *no_data)
    assert_user_error(done, f"cannot write {out}")
    assert ".tmp" not in done.stderr and all(path.read_bytes() == data for path, data in previous.items())
    expected = ["model.pt", name] + ([f"{name}.json"] if fmt == "torchscript" else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)


def test_a_failed_hub_export_to_a_new_folder_leaves_no_folder(tmp_path, weights, cli):
    out = tmp_path / "new" / "hub"
    args = ["--weights", weights, "--format", "hub", "--out", out, "--verify-images", "4"]
    with file_size_limit(100_000):
        done = cli("export", *args, "--data-dir", tmp_path / "no-mnist", "--no-download")
    assert_user_error(done, f"cannot write {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # neither hub nor the new folder above it


@contextlib.contextmanager
def file_size_limit(size: int):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_disk_that_fills_at_the_json_keeps_both_previous_files(tmp_path, weights, cli, monkeypatch):
    """The export and its .json are one pair: when the .json cannot be written, the new export is not kept either."""
    out = tmp_path / "m.torchscript.pt"
    args = ["--weights", weights, "--format", "torchscript", "--out", out, "--verify-images", "4"]
    assert cli("export", *args, "--data-dir", tmp_path / "no-mnist", "--no-download").returncode == 0  # the previous
    previous = out.read_bytes(), out.with_name(out.name + ".json").read_text()
    write_text = Path.write_text

    def full_at_the_json(path: Path, *args, **kwargs):
        if ".json." in path.name:  # the .json's temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_the_json)
    done = cli("export", *args, "--data-dir", tmp_path / "no-mnist", "--no-download")
    assert_user_error(done, "No space left on device; what was there before is unchanged")
    assert (out.read_bytes(), out.with_name(out.name + ".json").read_text()) == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.torchscript.pt", "m.torchscript.pt.json", "model.pt"]


KILLED_IN_THE_BLOCK = """
import os, signal, sys
from pathlib import Path
from support.files import atomic_folder
with atomic_folder(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"a whole export, all but renamed into place")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_later_export_removes_the_folder_a_killed_one_left(tmp_path, weights):
    """SIGKILL during `export.py --format hub` left .hub.XXXXXXXX.tmp beside --out for good; the next export removes
    it, but not the folder of an export still writing (its lock says so), nor a folder of the user's that only has
    such a name (it holds a file no export writes)."""
    from conftest import run_script

    from extras.exports import FORMATS, export
    from helper import load_checkpoint
    from support.files import atomic_folder

    out = tmp_path / "hub"
    assert run_script("-c", KILLED_IN_THE_BLOCK, str(out)).returncode == -9
    (left,) = tmp_path.glob(".hub.*.tmp")
    mine, draft = tmp_path / ".hub.abcdefgh.tmp", tmp_path / ".hub.ijklmnop.tmp"
    for folder, name in ((mine, "notes.txt"), (draft, "README.md")):  # (the second, a name an export writes)
        folder.mkdir()
        (folder / name).write_text("mine")
    with atomic_folder(tmp_path / "hub") as writing:  # another export of the same --out, not finished
        export(load_checkpoint(weights), FORMATS["hub"], out, torch.randn(4, 1, 32, 32), "noise")
        assert writing.is_dir() and not left.exists()
        (writing / "config.json").write_text("{}")  # (it ends as it would: its folder takes the place)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hub.abcdefgh.tmp", ".hub.ijklmnop.tmp", "hub", "model.pt"]
    assert (mine / "notes.txt").read_text() == "mine" and (draft / "README.md").read_text() == "mine"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors", "hub"])
def test_the_1998_network_exports_to_every_format(tmp_path, cli, fmt):
    """Its RBF output, trainable subsampling and input scaling are plain tensor operations every format holds."""
    from conftest import save_weights

    from helper import load_model
    from LeNet5 import LeNet5

    torch.manual_seed(0)
    model = LeNet5(lecun1998=True).eval()
    weights = save_weights(tmp_path / "lecun1998.pt", model, {"test_accuracy": 0.5})
    out = tmp_path / ("hub" if fmt == "hub" else f"model.{fmt}")
    no_mnist = ["--data-dir", tmp_path / "no-mnist", "--cache-dir", tmp_path / "no-cache", "--no-download"]
    done = cli("export", "--weights", weights, "--format", fmt, "--out", out, *no_mnist, "--verify-images", "9")
    assert done.returncode == 0, done.stderr
    x = torch.randn(5, 1, 32, 32)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    elif fmt == "torchscript":
        got = run_torchscript(out, x)
    else:
        loaded, _ = load_model(out)
        assert loaded.lecun1998 and torch.equal(loaded.output.centres, model.output.centres)
        got = loaded.eval()(x).detach()
    assert torch.allclose(got, model(x).detach(), atol=1e-4)


@pytest.mark.parametrize(
    "fmt, mine, message",
    [
        ("onnx", ["notes2.onnx", "notes2.onnx.json"], "--out {out} exists and is not an onnx export this program"),
        ("onnx", ["notes2.onnx.json"], "--out's .json {out}.json exists and is not the .json of a onnx export"),
        ("torchscript", ["notes2.torchscript"], "--out {out} exists and is not a torchscript export this program"),
        ("safetensors", ["notes2.safetensors"], "--out {out} exists and is not a safetensors export this program"),
    ],
)
def test_an_export_replaces_an_earlier_export_but_never_a_file_of_the_users(tmp_path, weights, cli, fmt, mine,
                                                                             message):  # fmt: skip
    """`export.py --format onnx --out notes2.onnx` replaced the user's notes2.onnx and notes2.onnx.json: refused,
    both as they were; an earlier export of this program's at --out is replaced, as ever."""
    name = {"onnx": "notes2.onnx", "torchscript": "notes2.torchscript", "safetensors": "notes2.safetensors"}[fmt]
    args = ["--weights", weights, "--format", fmt, "--verify-images", "4", "--data-dir", tmp_path / "no-mnist",
            "--no-download"]  # fmt: skip
    ours = tmp_path / "ours" / name
    for _ in range(2):
        done = cli("export", *args, "--out", ours)
        assert done.returncode == 0, done.stderr
    for file in mine:
        (tmp_path / file).write_text("the user's own notes")
    out = tmp_path / name
    done = cli("export", *args, "--out", out)
    assert_user_error(done, message.format(out=out))
    assert "move it or choose another --out" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", "ours", *mine])
    assert all((tmp_path / file).read_text() == "the user's own notes" for file in mine)


# Sends SIGINT while onnxruntime's package is being initialized (from its loader), and goes on: a stop there came
# out as "ImportError: initialization failed" (exit 1) or as "Exception ignored in ... _get_module_lock". Held until
# the import is done, it ends the export as any stop does. (torch.onnx only asks whether onnxruntime is there.)
STOP_IMPORTING_ONNXRUNTIME = """
import importlib.abc, importlib.util, os, runpy, signal, sys
class Stop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "onnxruntime":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        real = spec.loader
        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)
            def exec_module(self, module):
                os.kill(os.getpid(), signal.SIGINT)
                print("the import went on", file=sys.stderr, flush=True)
                real.exec_module(module)
        spec.loader = Loader()
        return spec
sys.meta_path.insert(0, Stop())
sys.argv = ["export.py", *sys.argv[1:]]
runpy.run_path("export.py", run_name="__main__")
"""


def test_a_stop_while_onnxruntime_loads_ends_the_export_as_any_stop(tmp_path, weights):
    from conftest import run_script

    out = tmp_path / "m.onnx"
    args = ["--weights", weights, "--format", "onnx", "--out", out, "--verify-images", "4", "--data-dir",
            tmp_path / "no-mnist", "--no-download"]  # fmt: skip
    done = run_script("-c", STOP_IMPORTING_ONNXRUNTIME, *map(str, args))
    assert done.returncode == 130, done.stderr
    assert done.stderr.endswith("the import went on\n\ninterrupted\n")  # the import finished, then the stop
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # nothing written, no temporary file


def test_a_users_file_beside_a_copy_of_our_json_is_still_the_users(tmp_path, weights, cli):
    """The user's notes.onnx beside a notes.onnx.json copied from an export of ours passed for our export, and was
    replaced: the .json now holds the export's SHA-256, which the user's file does not match."""
    args = ["--weights", weights, "--format", "onnx", "--verify-images", "4", "--data-dir", tmp_path / "no-mnist",
            "--no-download"]  # fmt: skip
    ours = tmp_path / "ours" / "notes.onnx"
    for _ in range(2):  # an export of ours is replaced by the next one, as ever
        assert cli("export", *args, "--out", ours).returncode == 0
    mine = tmp_path / "notes.onnx"
    mine.write_bytes(b"the user's own model")
    (tmp_path / "notes.onnx.json").write_bytes((tmp_path / "ours" / "notes.onnx.json").read_bytes())
    done = cli("export", *args, "--out", mine)
    assert_user_error(done, f"--out {mine} exists and is not an onnx export this program wrote")
    assert mine.read_bytes() == b"the user's own model"
