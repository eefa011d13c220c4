"""devices.py: the device choice, the memory layout and torch.compile."""

import json
import os
import shutil

from support.cli import UserError

import pytest
import torch
from conftest import TINY, assert_user_error, run_script, write_idx_dir

from LeNet5 import LeNet5
from support.devices import MEMORY_FORMAT, choose_device, place_batch, place_model


def test_cpu_is_always_there_and_auto_gives_a_usable_device():
    assert choose_device("cpu") == torch.device("cpu")
    auto = choose_device("auto")
    assert torch.ones(2, device=auto).sum().item() == 2  # a device tensors can live on


@pytest.mark.parametrize("name", ["cuda", "mps", "xpu"])
def test_an_absent_accelerator_is_a_user_error(name):
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is not None and accelerator.type == name:
        pytest.skip(f"this machine has {name}")
    with pytest.raises(UserError, match=f"--device {name} is not available on this machine"):
        choose_device(name)


def test_model_and_batches_share_one_layout():
    model = place_model(LeNet5(), "cpu")
    batch = place_batch(torch.randn(3, 1, 32, 32), "cpu")
    assert model.c1.weight.is_contiguous(memory_format=MEMORY_FORMAT)
    assert batch.is_contiguous(memory_format=MEMORY_FORMAT)


def train(tmp_path, name: str, *flags: str, env: dict[str, str]):
    """A tiny `python main.py` run in a fresh process (torch.compile's state is per process): (result, checkpoint)."""
    data = tmp_path / "mnist" if (tmp_path / "mnist").is_dir() else write_idx_dir(tmp_path / "mnist")
    out = tmp_path / name / "lenet5.pt"
    done = run_script("main.py", "--data-dir", str(data), *TINY, "--epochs", "1", *flags, "--out", str(out),
                      "--report-dir", str(tmp_path / name / "reports"), env=env, timeout=600)  # fmt: skip
    return done, out


@pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None, reason="torch.compile needs a C++ compiler")
def test_a_compiled_run_saves_the_plain_model_with_the_eager_runs_weights(tmp_path):
    """--compile sends the training steps through torch.compile (into a cache of this test's own, so it compiles
    from nothing); the checkpoint holds the plain LeNet5 (no torch.compile wrapper in its names), and after the
    same steps its weights are the eager run's, to float32 rounding."""
    cache = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "compile-cache")}
    weights = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        done, out = train(tmp_path, name, *flags, env=cache)
        assert done.returncode == 0, done.stderr[-3000:]
        weights[name] = torch.load(out, weights_only=True)["state_dict"]
        compiled_graphs = tmp_path / "compile-cache" / "fxgraph"
        assert compiled_graphs.exists() == (name == "compiled")  # it compiled; the eager run did not
        epochs = json.loads(out.with_suffix(".json").read_text())["epochs"]
        assert [e["compiled"] for e in epochs] == [name == "compiled"]  # so its timings are read for what they are
    eager, compiled = weights["eager"], weights["compiled"]
    assert compiled.keys() == eager.keys() and "c1.weight" in compiled
    for key in eager:
        assert torch.allclose(compiled[key], eager[key], atol=1e-5, rtol=0), (
            key,
            (compiled[key] - eager[key]).abs().max(),
        )


def test_a_machine_that_cannot_compile_is_told_before_training(tmp_path):
    env = {"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty-cache")}
    done, out = train(tmp_path, "run", "--compile", env=env)
    assert_user_error(done, "--compile: torch.compile failed (")
    assert "run without --compile" in done.stderr and "epoch 1" not in done.stdout
    assert not out.parent.exists()
