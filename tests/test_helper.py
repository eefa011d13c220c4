"""helper.py: the checkpoint, saved and read back in any format, checked whole before anything is built."""

import os
import pickle
import re

import pytest
import torch
from conftest import save_weights

from helper import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_model, save_checkpoint
from LeNet5 import INPUT_NORMALIZATION, LeNet5


def test_save_load_round_trip_gives_identical_outputs(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_weights(path, tiny_model, {"test_accuracy": 0.5})
    model, checkpoint = load_model(path)
    x = torch.randn(5, 1, 32, 32)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in model.state_dict().items())
    # load_model returns a channels_last model (the fast layout); compare in the same layout
    assert torch.equal(model(x), tiny_model.to(memory_format=torch.channels_last).eval()(x))
    assert checkpoint.config == {"num_classes": 10, "c3_table": True} and checkpoint.kind == "pt"
    assert checkpoint.metrics == {"test_accuracy": 0.5} and checkpoint.train_state is None
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["torch_version"] == torch.__version__
    assert raw["normalization"] == INPUT_NORMALIZATION
    assert not model.training


def test_training_state_is_split_once_and_joined_back(tmp_path, tiny_model):
    training = {"model": tiny_model.state_dict(), "epoch": 3, "optimizer": {"x": 1}, "history": {"epochs": []}}
    save_checkpoint(tmp_path / "r.pt", tiny_model.config, training, data={"fingerprint": "abc"})
    checkpoint = load_checkpoint(tmp_path / "r.pt", resumable=True)
    assert "model" not in checkpoint.train_state and checkpoint.sealed()  # the weights are stored once
    joined = checkpoint.training_state()
    assert set(joined) == set(training) and joined["epoch"] == 3 and checkpoint.data["fingerprint"] == "abc"
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


def as_int64(weights: dict) -> dict:
    return {name: value.long() if name == "c1.weight" else value for name, value in weights.items()}


PAPER = {"num_classes": 10, "c3_table": True, "lecun1998": True}


def with_mask(value: float) -> dict:
    """LeNet5's weights with the C3 mask edited, and the weights it masked made non-zero (they then count)."""
    weights = LeNet5().state_dict()
    weights["c3.weight"] = weights["c3.weight"] + 0.1
    return {**weights, "c3.mask": torch.full_like(weights["c3.mask"], value)}


def with_bitmaps() -> dict:
    weights = LeNet5(lecun1998=True).state_dict()
    return {**weights, "output.centres": -weights["output.centres"]}


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
        (lambda p: torch.save({"state_dict": {"w": 1}, "config": {}}, p), "other than named tensors"),
        (with_nan, "holds NaN or infinite weights (f6.bias)"),
        (lambda p: rewritten(p, format=CHECKPOINT_FORMAT + 1), "written by a newer version"),
        (lambda p: rewritten(p, format="3"), "its format '3' is not a version number"),
        (lambda p: rewritten(p, normalization={"pad": 2, "mean": 0.5, "std": 0.5}), "trained on inputs normalized"),
        (lambda p: p.write_text("hello, a text file"), "of another kind (the bytes are not a torch.save file)"),
        (lambda p: rewritten(p, config={"num_classes": 20_000_000}), "asks for 20000000 classes"),
        (lambda p: rewritten(p, config={"num_classes": 10.0}), "num_classes is 10.0, where LeNet5 takes int"),
        (lambda p: rewritten(p, config={"width": 3}), "is not LeNet5's (arguments: num_classes, c3_table"),
        (lambda p: rewritten(p, state_dict=as_int64(LeNet5().state_dict())), "c1.weight is torch.int64 (6, 1, 5, 5)"),
        (lambda p: rewritten(p, epoch=-1), "its epoch -1 is not a count"),
        (lambda p: rewritten(p, metrics={"test_accuracy": "99 %"}), "its test_accuracy '99 %' is not a fraction"),
        (lambda p: rewritten(p, metrics={"recipe": {"name": ["a list"]}}), "its recipe or data holds 'name' = "),
        (lambda p: rewritten(p, data={"fingerprint": "x" * 10_000}), "holds 'fingerprint' = 'xxxx"),
        (lambda p: rewritten(p, state_dict=with_mask(1.0)), "its c3.mask (constants that its model config implies"),
        (lambda p: rewritten(p, state_dict=with_mask(0.5)), "differ from LeNet5's: the file was edited or damaged"),
        (lambda p: rewritten(p, config=PAPER, state_dict=with_bitmaps()), "its output.centres (constants"),
    ],
    ids=["missing", "directory", "code-pickle", "code-pickle-2", "code-in-zip", "foreign", "no-tensors", "nan",
         "newer", "format-str", "normalization", "text", "huge-config", "float-classes", "unknown-argument",
         "int-weights", "negative-epoch", "accuracy-text", "recipe-list", "long-text", "mask-ones", "mask-half",
         "bitmaps"],
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
    with pytest.raises(CheckpointError, match="its tensors do not fit LeNet5 .missing c1.weight"):
        load_model(tmp_path / "other.pt")
    torch.save({"architecture": "ResNet", "state_dict": {}, "config": {}}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="holds a 'ResNet', not a LeNet5"):
        load_model(tmp_path / "resnet.pt")


@pytest.mark.parametrize("damage", ["C1 x 1000 in place", "a flipped bit in F6"])
def test_a_checkpoint_whose_bytes_changed_is_refused_as_damaged(weights, damage):
    """torch.load never compares a zip member with its CRC-32: weights changed in place, or one flipped bit,
    loaded and were evaluated as if nothing had happened (97.59 %, exit 0). The reader compares them first."""
    raw = bytearray(weights.read_bytes())
    saved = torch.load(weights, weights_only=True)["state_dict"]
    name = "c1.weight" if damage.startswith("C1") else "f6.weight"
    where = raw.find(saved[name].numpy().tobytes())  # (torch stores tensors uncompressed)
    assert where > 0
    if name == "c1.weight":
        changed = (saved[name] * 1000).numpy().tobytes()
        raw[where : where + len(changed)] = changed
    else:
        raw[where + 1001] ^= 0x10
    weights.write_bytes(bytes(raw))
    message = rf"^{re.escape(str(weights))} is damaged \(data/\d+ fails its checksum\); replace it with a fresh"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(weights)


def test_the_committed_checkpoints_pass_their_checksums():
    from conftest import PROJECT_DIR

    committed = sorted((PROJECT_DIR / "checkpoints").glob("*.pt"))
    assert committed
    for path in committed:
        assert load_checkpoint(path).state_dict
