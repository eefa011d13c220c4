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
    out.write_text("previous export")
    out.with_name(out.name + ".json").write_text('{"previous": true}')
    write_text = Path.write_text

    def full_at_the_json(path: Path, *args, **kwargs):
        if ".json." in path.name:  # the .json's temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_the_json)
    args = ["--weights", weights, "--format", "torchscript", "--out", out, "--verify-images", "4"]
    done = cli("export", *args, "--data-dir", tmp_path / "no-mnist", "--no-download")
    assert_user_error(done, "No space left on device; what was there before is unchanged")
    assert out.read_text() == "previous export"
    assert out.with_name(out.name + ".json").read_text() == '{"previous": true}'
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
    it, but not the folder of an export still writing (its lock says so)."""
    from conftest import run_script

    from extras.exports import FORMATS, export
    from helper import load_checkpoint
    from support.files import atomic_folder

    out = tmp_path / "hub"
    assert run_script("-c", KILLED_IN_THE_BLOCK, str(out)).returncode == -9
    (left,) = tmp_path.glob(".hub.*.tmp")
    with atomic_folder(tmp_path / "hub") as writing:  # another export of the same --out, not finished
        export(load_checkpoint(weights), FORMATS["hub"], out, torch.randn(4, 1, 32, 32), "noise")
        assert writing.is_dir() and not left.exists()
        (writing / "config.json").write_text("{}")  # (it ends as it would: its folder takes the place)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "model.pt"]


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
