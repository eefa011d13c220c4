import os
import pickle

import pytest
import torch

from helper import (
    CheckpointError,
    UserError,
    atomic_torch_save,
    load_checkpoint,
    load_model,
    resolve_device,
    save_model,
)
from LeNet5 import LeNet5

NORMALIZATION = {"mean": 0.1307, "std": 0.3081, "pad": 2}


def test_save_load_round_trip_gives_identical_outputs(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_model(path, tiny_model, epoch=3, metrics={"test_accuracy": 0.5}, normalization=NORMALIZATION)
    model, checkpoint = load_model(path)
    x = torch.randn(5, 1, 32, 32)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in model.state_dict().items())
    # load_model returns a channels_last model (the fast layout); compare in the same layout
    assert torch.equal(model(x), tiny_model.to(memory_format=torch.channels_last).eval()(x))
    assert checkpoint["epoch"] == 3 and checkpoint["config"] == {"num_classes": 10, "c3_table": True}
    assert checkpoint["normalization"] == NORMALIZATION and checkpoint["torch_version"] == torch.__version__
    assert not model.training


def test_full_c3_config_is_rebuilt(tmp_path):
    path = tmp_path / "full.pt"
    save_model(path, LeNet5(c3_table=False), 1, {}, NORMALIZATION)
    model, _ = load_model(path)
    assert model.config["c3_table"] is False


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such checkpoint"),
        (lambda p: p.write_bytes(os.urandom(2048)), "not a readable checkpoint"),
        (lambda p: p.write_bytes(pickle.dumps({"state_dict": Exploit(), "config": {}})), "would run code"),
        (lambda p: torch.save({"weights": 1}, p), "not a checkpoint of this project"),
    ],
    ids=["missing", "random-bytes", "code-pickle", "foreign-dict"],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hand-made pickle, not ours
def test_bad_checkpoints_give_one_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_truncated_checkpoint(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_model(path, tiny_model, 1, {}, NORMALIZATION)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_other_architecture_is_refused(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(4, 2))
    torch.save({"state_dict": other.state_dict(), "config": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="weights do not fit LeNet5"):
        load_model(tmp_path / "other.pt")
    torch.save({"architecture": "ResNet", "state_dict": {}, "config": {}}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="holds a ResNet"):
        load_model(tmp_path / "resnet.pt")


def test_atomic_save_leaves_old_file_intact_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"v": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.pt"]  # no temp file left behind


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="--device cuda is not available"):
            resolve_device("cuda")


def test_unwritable_destination_is_a_user_error(tmp_path, tiny_model):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(UserError, match="cannot write"):
        save_model(blocker / "model.pt", tiny_model, 1, {}, NORMALIZATION)
