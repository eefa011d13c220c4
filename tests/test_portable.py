"""support/portable.py: the safetensors file and the Hugging Face Hub folder, written by export.py, read back
by every --weights (helper.load_checkpoint), refused in one line when damaged or foreign."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_DIR, assert_user_error, run_script, save_weights, synthetic_digits
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from data import DataSource, preprocess
from extras.exports import FORMATS, export
from helper import load_checkpoint, load_model
from LeNet5 import LeNet5
from support import portable

COMMITTED = PROJECT_DIR / "checkpoints" / "lenet5.pt"  # only read


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    """1,000 real MNIST test images when MNIST_DIR is set, synthetic digits otherwise."""
    directory = os.environ.get("MNIST_DIR")
    if directory and Path(directory).is_dir():
        digits = DataSource(Path(directory), cache_dir=None, download=False).open().test_images[:1000]
    else:
        digits = synthetic_digits(1000, seed=3)[0]
    return preprocess(digits)


@pytest.fixture
def source(weights) -> Path:
    """The committed trained checkpoint, else the fixture's untrained one."""
    return COMMITTED if COMMITTED.is_file() else weights


def exported(source: Path, fmt: str, out: Path, images: torch.Tensor) -> Path:
    """Through export.py's pipeline: written, read back, compared bit for bit, moved into place."""
    export(load_checkpoint(source), FORMATS[fmt], out, images, "test images")
    return out


def logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(path)
    with torch.inference_mode():
        return model(images)


def test_safetensors_gives_the_same_logits_as_the_pt(tmp_path, source, test_images):
    out = exported(source, "safetensors", tmp_path / "lenet5.safetensors", test_images)
    assert torch.equal(logits(out, test_images), logits(source, test_images))
    with safe_open(str(out), framework="pt") as file:
        metadata = file.metadata()
    original = torch.load(source, map_location="cpu", weights_only=True)
    assert json.loads(metadata["config"])["c3_table"] == original["config"].get("c3_table", True)
    assert json.loads(metadata["preprocessing"])["mean"] == 0.1307
    assert json.loads(metadata["metrics"])["test_accuracy"] == original["metrics"]["test_accuracy"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside it


def test_hub_folder_loads_back_with_the_same_weights(tmp_path, source, test_images, monkeypatch):
    folder = exported(source, "hub", tmp_path / "lenet5-hub", test_images)
    assert sorted(p.name for p in folder.iterdir()) == sorted(portable.HUB_FILES)
    original = torch.load(source, map_location="cpu", weights_only=True)["state_dict"]
    loaded = load_model(folder)[0].state_dict()
    assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in original)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import PyTorchModelHubMixin

    class HubLeNet5(LeNet5, PyTorchModelHubMixin):
        pass

    by_hub = HubLeNet5.from_pretrained(folder).state_dict()  # the card's "anywhere else" recipe
    assert all(torch.equal(by_hub[k], original[k]) for k in original)
    card = (folder / "README.md").read_text()
    for section in ("## Results", "| 9 |", "## Training recipe", "## Preprocessing", "## Intended use", "hf upload"):
        assert section in card


def test_eval_reports_alike_for_pt_safetensors_and_hub(tmp_path, weights, cli, idx_dir):
    images = preprocess(synthetic_digits(8, seed=5)[0])
    paths = [weights, exported(weights, "safetensors", tmp_path / "m.safetensors", images)]
    paths.append(exported(weights, "hub", tmp_path / "hub", images))
    reports = []
    for path in paths:
        done = cli(
            "eval",
            "--weights",
            path,
            "--data-dir",
            idx_dir,
            "--allow-custom-data",
            "--no-download",
            "--report-dir",
            tmp_path / "r",
        )
        assert done.returncode == 0, done.stderr
        reports.append(done.stdout.split("wrote:")[0])
    assert reports[0] == reports[1] == reports[2]


def test_a_hub_folder_whose_weights_were_swapped_is_refused(tmp_path, weights, cli):
    """Another export's model.safetensors copied into a hub folder is a whole, valid file, but config.json and the
    model card describe the old weights: the folder's record of its files' SHA-256 says so before any use."""
    images = preprocess(synthetic_digits(8, seed=5)[0])
    torch.manual_seed(1)
    other = save_weights(tmp_path / "other.pt", LeNet5())
    hub = exported(weights, "hub", tmp_path / "hub", images)
    exported(other, "hub", tmp_path / "other_hub", images)
    (hub / portable.WEIGHTS_FILE).write_bytes((tmp_path / "other_hub" / portable.WEIGHTS_FILE).read_bytes())
    done = cli("predict", "--weights", hub, PROJECT_DIR / "examples" / "seven.jpg")
    assert_user_error(done, "its model.safetensors is not the one its config.json was exported with")


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    """One good safetensors export of an untrained LeNet5, for the damage cases to spoil (each a copy of its own)."""
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    weights = save_weights(folder / "model.pt", LeNet5(), {"test_accuracy": 0.5})
    return exported(weights, "safetensors", folder / "good.safetensors", preprocess(synthetic_digits(4, seed=5)[0]))


def damage(tmp_path: Path, good: Path, kind: str) -> Path:
    """A file or folder that must be refused, made from a good export."""
    bad = tmp_path / f"{kind}.safetensors"
    tensors = load_file(good)
    with safe_open(str(good), framework="pt") as file:
        metadata = file.metadata()
    del metadata[portable.DIGEST_KEY]  # as other code writes them, or an older version: the checks below still hold
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random":
        bad.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=torch.Generator()).tolist()))
    elif kind == "a .pt renamed":
        bad.write_bytes(COMMITTED.read_bytes() if COMMITTED.is_file() else b"PK\x03\x04")
    elif kind == "foreign":
        save_file({"bert.embeddings.weight": torch.zeros(3, 4)}, bad)
    elif kind == "wrong shape":
        save_file({**tensors, "c5.weight": torch.zeros(120, 300)}, bad, metadata=metadata)
    elif kind in ("mask of ones", "hub mask of ones"):  # every C3 connection switched on, masked weights non-zero
        edited = {**tensors, "c3.mask": torch.ones(16, 6, 1, 1), "c3.weight": tensors["c3.weight"] + 0.1}
        if kind == "hub mask of ones":
            bad = tmp_path / "hub"
            bad.mkdir()
            config = {"num_classes": 10, "c3_table": True, "architecture": "LeNet5", "layout_version": 1}
            (bad / "config.json").write_text(json.dumps(config))
        save_file(edited, bad / "model.safetensors" if bad.is_dir() else bad, metadata=metadata)
    elif kind == "nan":
        save_file({**tensors, "f6.bias": torch.full((84,), float("nan"))}, bad, metadata=metadata)
    elif kind == "bad json":
        save_file(tensors, bad, metadata={**metadata, "metrics": "{not json"})
    elif kind == "deep json":
        save_file(tensors, bad, metadata={**metadata, "metrics": "[" * 100_000 + "]" * 100_000})
    elif kind == "json 500 deep":  # json.loads takes it, and re-exporting it overflowed the stack
        save_file(tensors, bad, metadata={**metadata, "metrics": '{"zz": ' + "[" * 500 + "]" * 500 + "}"})
    else:  # hub folders
        bad = tmp_path / kind.replace(" ", "_")
        bad.mkdir()
        if kind != "hub without weights":
            (bad / "model.safetensors").write_bytes(good.read_bytes())
        if kind != "hub without config":
            deep = '{"a":' * 100_000 + "1" + "}" * 100_000
            config = {"hub bad config": '{"num_classes": 10,', "hub deep config": deep}
            (bad / "config.json").write_text(config.get(kind, "{}"))
    return bad


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "not a readable safetensors file: damaged, truncated or of another kind"),
        ("random", "not a readable safetensors file"),
        ("a .pt renamed", "not a readable safetensors file"),
        ("foreign", "a safetensors file without this project's LeNet5 metadata"),
        (
            "wrong shape",
            "do not fit LeNet5 (c5.weight is torch.float32 (120, 300), LeNet5's is torch.float32 (120, 400))",
        ),
        ("nan", "holds NaN or infinite weights (f6.bias)"),
        ("mask of ones", "its c3.mask (constants that its model config implies, never trained) differ from LeNet5's"),
        ("hub mask of ones", "its c3.mask (constants that its model config implies, never trained) differ"),
        ("bad json", "metadata 'metrics' is not valid JSON"),
        ("hub without config", "a hub folder needs config.json"),
        ("hub without weights", "a hub folder needs model.safetensors"),
        ("hub bad config", "config.json is not valid JSON"),
        ("deep json", "metadata 'metrics' is not valid JSON (nested too deeply)"),
        ("json 500 deep", "metadata 'metrics' is nested more than 32 levels deep"),
        ("hub deep config", "config.json is not valid JSON (nested too deeply)"),
    ],
)
def test_damaged_or_foreign_exports_are_one_line(tmp_path, good_export, cli, kind, message):
    bad = damage(tmp_path, good_export, kind)
    assert_user_error(cli("predict", PROJECT_DIR / "examples", "--weights", bad), message)


def test_a_damaged_safetensors_is_one_line_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    done = run_script("eval.py", "--weights", str(bad), "--report-dir", str(tmp_path / "reports"))
    assert_user_error(done, f"{bad}: not a readable safetensors file")


def test_an_export_cannot_be_resumed(tmp_path, weights, cli, idx_dir):
    out = exported(weights, "safetensors", tmp_path / "m.safetensors", preprocess(synthetic_digits(4, seed=5)[0]))
    done = cli("main", "--resume", out, "--data-dir", idx_dir, "--no-download", "--report-dir", tmp_path / "r")
    assert_user_error(done, "an export holds the weights only, no training state of this version to resume from")


def test_only_a_safetensors_file_of_this_project_may_be_replaced_by_an_export(tmp_path, good_export):
    """portable.written_here, what an export asks of a file already at its --out: this project's metadata, read from
    the header alone (another model's file, however large, is not read)."""
    save_file({"bert.embeddings.weight": torch.zeros(3, 4)}, tmp_path / "foreign.safetensors")
    (tmp_path / "notes.safetensors").write_text("the user's own notes")
    assert portable.written_here(good_export)
    for name in ("foreign.safetensors", "notes.safetensors", "missing.safetensors"):
        assert not portable.written_here(tmp_path / name)


def flip_bits(path: Path, tensor: str, count: int) -> None:
    """Flip the lowest mantissa bit of the first `count` float32s of `tensor`, in place in the file (the values stay
    finite and close: nothing but a digest can tell)."""
    data = bytearray(path.read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + header_size])[tensor]["data_offsets"]
    assert end - begin >= 4 * count
    for offset in range(8 + header_size + begin, 8 + header_size + begin + 4 * count, 4):
        data[offset] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", ["safetensors", "hub"])
def test_a_bit_flipped_export_is_refused_not_evaluated(tmp_path, weights, cli, idx_dir, fmt):
    """200 float32s of c5.weight bit-flipped were evaluated silently (a slightly different accuracy, exit 0):
    the tensors' SHA-256, written into the metadata, no longer matches them."""
    images = preprocess(synthetic_digits(4, seed=5)[0])
    out = exported(weights, fmt, tmp_path / ("hub" if fmt == "hub" else "flip.safetensors"), images)
    flip_bits(out / portable.WEIGHTS_FILE if fmt == "hub" else out, "c5.weight", 200)
    done = cli("eval", "--weights", out, "--data-dir", idx_dir, "--allow-custom-data", "--no-download",
               "--report-dir", tmp_path / "r")  # fmt: skip
    assert_user_error(done, f"{out}: its tensors do not match the digest it was written with: the file is damaged")
    assert not (tmp_path / "r").exists()


def test_the_digest_is_of_the_tensors_not_of_the_file_layout(tmp_path, good_export, test_images):
    """The same tensors and metadata written again (in another order, by safetensors itself) load as before; a
    file without the digest (another program's, an older version's) loads too, after the usual checks."""
    tensors = load_file(good_export)
    with safe_open(str(good_export), framework="pt") as file:
        metadata = file.metadata()
    assert metadata[portable.DIGEST_KEY] == portable.tensors_digest(tensors)
    save_file(dict(reversed(tensors.items())), tmp_path / "again.safetensors", metadata=metadata)
    without = {name: value for name, value in metadata.items() if name != portable.DIGEST_KEY}
    save_file(tensors, tmp_path / "without.safetensors", metadata=without)
    expected = logits(good_export, test_images)
    for name in ("again.safetensors", "without.safetensors"):
        assert torch.equal(logits(tmp_path / name, test_images), expected)
