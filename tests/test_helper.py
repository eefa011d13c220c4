import os
import pickle
import stat

import pytest
import torch
from conftest import save_weights

from helper import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_outputs,
    atomic_torch_save,
    load_checkpoint,
    load_model,
    save_checkpoint,
    training_state,
    write_json,
)
from LeNet5 import INPUT_NORMALIZATION, LeNet5


def test_save_load_round_trip_gives_identical_outputs(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_weights(path, tiny_model, {"test_accuracy": 0.5})
    model, checkpoint = load_model(path)
    x = torch.randn(5, 1, 32, 32)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in model.state_dict().items())
    # load_model returns a channels_last model (the fast layout); compare in the same layout
    assert torch.equal(model(x), tiny_model.to(memory_format=torch.channels_last).eval()(x))
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["config"] == {"num_classes": 10, "c3_table": True}
    assert checkpoint["normalization"] == INPUT_NORMALIZATION and checkpoint["torch_version"] == torch.__version__
    assert checkpoint["metrics"] == {"test_accuracy": 0.5} and "train_state" not in checkpoint
    assert not model.training


def test_training_state_is_split_once_and_joined_back(tmp_path, tiny_model):
    training = {"model": tiny_model.state_dict(), "epoch": 3, "optimizer": {"x": 1}, "history": {"epochs": []}}
    save_checkpoint(tmp_path / "r.pt", tiny_model.config, training, data={"fingerprint": "abc"})
    checkpoint = load_checkpoint(tmp_path / "r.pt", resumable=True)
    assert "model" not in checkpoint["train_state"]  # the weights are stored once, as state_dict
    joined = training_state(checkpoint)
    assert set(joined) == set(training) and joined["epoch"] == 3 and checkpoint["data"]["fingerprint"] == "abc"
    assert all(torch.equal(joined["model"][k], v) for k, v in training["model"].items())


def test_weights_only_checkpoint_is_not_resumable(weights):
    with pytest.raises(CheckpointError, match="holds no training state of this version"):
        load_checkpoint(weights, resumable=True)


def test_full_c3_config_is_rebuilt(tmp_path):
    save_weights(tmp_path / "full.pt", LeNet5(c3_table=False))
    model, _ = load_model(tmp_path / "full.pt")
    assert model.config["c3_table"] is False


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def with_nan(path):
    model = LeNet5()
    with torch.no_grad():
        model.f6.bias[3] = float("nan")
    save_weights(path, model)


def rewritten(path, **changes):
    save_weights(path, LeNet5())
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, **changes}, path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such checkpoint"),
        (lambda p: p.mkdir(), "is a directory; pass the checkpoint file"),
        (lambda p: p.write_bytes(pickle.dumps({"state_dict": Exploit()})), "would run code on load (posix"),
        (lambda p: p.write_bytes(pickle.dumps({"a": Exploit()}, protocol=2)), "would run code on load (posix"),
        (lambda p: torch.save({"state_dict": {"w": Exploit()}}, p), "would run code on load (posix"),
        (lambda p: torch.save({"weights": 1}, p), "not a checkpoint of this project"),
        (lambda p: torch.save({"state_dict": {"w": 1}, "config": {}}, p), "holds something other than tensors"),
        (with_nan, "holds NaN or infinite weights (f6.bias)"),
        (lambda p: rewritten(p, format=CHECKPOINT_FORMAT + 1), "written by a newer version"),
        (lambda p: rewritten(p, format="3"), "its format '3' is not a version number"),
        (lambda p: rewritten(p, normalization={"pad": 2, "mean": 0.5, "std": 0.5}), "trained on inputs normalized"),
        (lambda p: p.write_text("hello, a text file"), "of another kind (the bytes are not a torch.save file)"),
    ],
    ids=["missing", "directory", "code-pickle", "code-pickle-2", "code-in-zip", "foreign", "no-tensors", "nan",
         "newer", "format-str", "normalization", "text"],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hand-made pickle, not ours
def test_bad_checkpoints_give_one_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(path)


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_are_called_damaged_never_code(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed)).byte().numpy())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "damaged, truncated or of another kind" in str(err.value) and "run code" not in str(err.value)


def test_truncated_checkpoint(tmp_path, weights):
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="damaged, truncated"):
        load_checkpoint(weights)


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


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "a.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_json_is_strict(tmp_path):
    with pytest.raises(ValueError):
        write_json({"accuracy": float("nan")}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_two_writers_of_one_pair_never_mix_their_files(tmp_path):
    """Two writers replacing the same checkpoint and .json at the same moment: afterwards both files are
    one writer's, every time (their renames took turns with the other's before the lock)."""
    import threading

    pair = tmp_path / "lenet5.pt", tmp_path / "lenet5.json"
    rounds, start, mixed = 150, threading.Barrier(2), []

    def writer(name: str) -> None:
        for round_ in range(rounds):
            start.wait()
            with atomic_outputs(*pair) as temps:
                for tmp in temps:
                    tmp.write_text(f"{name} {round_}")
            if start.wait() == 0:  # both are done: one of them looks
                contents = {path.read_text() for path in pair}
                mixed.extend([contents] if len(contents) > 1 else [])

    threads = [threading.Thread(target=writer, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mixed == [] and sorted(os.listdir(tmp_path)) == ["lenet5.json", "lenet5.pt"]
