import gzip
import hashlib
import os
from pathlib import Path

from support.cli import UserError

import pytest
import torch
from conftest import N_TEST, N_TRAIN, run_script, synthetic_mnist, write_idx_dir

from data import (
    CACHE_FILES,
    MNIST_MEAN,
    MNIST_STD,
    DataSource,
    data_source,
    fingerprint,
    load_mnist,
    make_loaders,
    preprocess,
    resolve_data_dir,
)
from support.augment import BACKGROUND
from support.distributed import World
from support.idx import CUSTOM_FILES, MNIST_FILES, DataError, IdxFile, read_idx
from support.recipes import Recipe


def spec_of(directory):
    """A strict spec (count and MD5) that matches the synthetic files, to exercise the checksum and cache paths."""
    spec = {}
    for key, official in MNIST_FILES.items():
        path = next(directory.glob(official.name + "*"))
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        count = int.from_bytes(raw[4:8], "big")
        spec[key] = IdxFile(official.name, official.magic, count, hashlib.md5(raw).hexdigest())
    return spec


def test_official_spec_rejects_synthetic_files_by_count(idx_dir):
    with pytest.raises(DataError, match=f"holds {N_TRAIN} images, expected 60,000"):
        read_idx(idx_dir / "train-images-idx3-ubyte.gz", MNIST_FILES["train_images"])


def test_checksum_mismatch_names_the_file(idx_dir, tmp_path):
    spec = spec_of(idx_dir)
    path = idx_dir / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # a different but valid label
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: MD5 .* does not match"):
        load_mnist(idx_dir, tmp_path / "cache", spec, download=False)


@pytest.mark.parametrize("layout", ["flat-gz", "flat-raw", "torchvision"])
def test_load_mnist_layouts(tmp_path, layout):
    root = tmp_path / "root"
    directory = root / "MNIST" / "raw" if layout == "torchvision" else root
    write_idx_dir(directory, gz=layout != "flat-raw")
    data = load_mnist(root, None, CUSTOM_FILES, download=False)
    assert data.train_images.shape == (N_TRAIN, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_labels.shape == (N_TEST,) and data.test_labels.dtype == torch.int64
    assert torch.equal(data.train_labels, torch.arange(N_TRAIN) % 10)


def test_a_failed_download_leaves_no_folder_it_made(tmp_path, monkeypatch):
    """torchvision's downloader makes data/MNIST/raw before it fails offline: the project's default data/ was left
    behind, empty. (The downloader is replaced by one that fails the same way, so that no test needs the network.)"""
    import os

    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            os.makedirs(os.path.join(root, "MNIST", "raw"), exist_ok=True)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError, match="and the download failed"):
        load_mnist(tmp_path / "data", None, MNIST_FILES, download=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # a folder that was there stays, even empty
    with pytest.raises(DataError):
        load_mnist(tmp_path / "mine", None, MNIST_FILES, download=True)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and list((tmp_path / "mine").iterdir()) == []


def test_a_pipe_in_the_cache_folder_is_passed_over_not_waited_on(tmp_path):
    """A FIFO at the cache's training.pt or test.pt hung main.py and eval.py for ever (torch.load waited for a
    writer). It is now no cache (rebuilt from the IDX files) and nobody's cache file (so never replaced either).
    Run in a process of its own, so that a hang is a timeout, not a stuck test session."""
    import os
    import subprocess

    for name in ("training.pt", "test.pt"):
        os.mkfifo(tmp_path / name)
    code = (
        "import sys; from pathlib import Path; from data import _load_cache, CACHE_KINDS; from support.idx import "
        "MNIST_FILES; d = Path(sys.argv[1]); print(_load_cache(d, MNIST_FILES), CACHE_KINDS['test.pt'].ours(d / "
        "'test.pt'))"
    )
    try:
        done = run_script("-c", code, str(tmp_path), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a pipe in the cache folder was waited on")
    assert done.returncode == 0 and done.stdout.split() == ["None", "False"], done.stderr


def test_missing_files_message(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path / "nowhere", None, MNIST_FILES, download=False)
    message = str(err.value)
    for expected in (
        "nowhere",
        "MNIST/raw",
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "--data-dir",
        "MNIST_DIR",
    ):
        assert expected in message


def test_cache_is_written_reused_and_rebuilt(idx_dir, tmp_path, monkeypatch):
    import data

    spec, cache = spec_of(idx_dir), tmp_path / "cache"
    source_files = sorted(os.listdir(idx_dir))
    first = load_mnist(idx_dir, cache, spec, download=False)
    assert sorted(os.listdir(idx_dir)) == source_files  # nothing written into the source folder
    assert sorted(p.name for p in cache.iterdir()) == sorted(CACHE_FILES)
    images, labels = torch.load(cache / "training.pt", weights_only=True)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and images.shape == (N_TRAIN, 28, 28)

    moved = tmp_path / "moved"
    idx_dir.rename(moved)  # the same files elsewhere: the cache stands for them, and they are not read again
    with monkeypatch.context() as patched:
        patched.setattr(data, "read_idx", lambda *a: pytest.fail("the cache was made from these very files"))
        assert torch.equal(load_mnist(moved, cache, spec, download=False).test_images, first.test_images)
        # the project's own data/ (cache_alone) may hold no files at all; a folder someone named may not
        assert torch.equal(load_mnist(idx_dir, cache, spec, False, cache_alone=True).test_images, first.test_images)
    with pytest.raises(DataError, match="MNIST not found in"):
        load_mnist(idx_dir, cache, spec, download=False)

    images, labels = torch.load(cache / "training.pt", weights_only=True)
    torch.save((255 - images, labels), cache / "training.pt")  # other data of the same shapes is not taken
    assert torch.equal(load_mnist(moved, cache, spec, download=False).train_images, first.train_images)
    torch.save((images[:5], labels[:5]), cache / "test.pt")  # a cache of other shapes is rebuilt from the files
    again = load_mnist(moved, cache, spec, download=False)
    assert torch.equal(again.test_images, first.test_images)
    assert torch.load(cache / "test.pt", weights_only=True)[0].shape == (N_TEST, 28, 28)


@pytest.mark.parametrize("foreign", ["test.pt", "training.pt", "sources.json", "all"])
def test_files_of_the_users_under_the_caches_names_are_never_replaced(idx_dir, tmp_path, weights, capsys, foreign):
    """A --cache-dir holding the user's own test.pt (a LeNet checkpoint, even), training.pt or sources.json had
    all three replaced silently: the cache is skipped for the run, with one warning naming the file."""
    spec, cache = spec_of(idx_dir), tmp_path / "cache"
    mine = {"test.pt": weights.read_bytes(), "training.pt": b"notes\n", "sources.json": b'{"my": "sources list"}'}
    mine = {name: content for name, content in mine.items() if foreign in (name, "all")}
    cache.mkdir()
    for name, content in mine.items():
        (cache / name).write_bytes(content)
    data = load_mnist(idx_dir, cache, spec, download=False)
    assert torch.equal(data.test_images, load_mnist(idx_dir, None, CUSTOM_FILES, download=False).test_images)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == mine  # none replaced, and nothing written beside
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: the MNIST cache in {cache}"), warning
    name = next(name for name in CACHE_FILES if name in mine)  # (the first checked)
    assert f"--cache-dir's {name} {cache / name} exists and is not " in warning[0]
    assert "move it or choose another --cache-dir" in warning[0] and warning[0].endswith("the run goes on")


@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_a_damaged_file_is_found_even_when_the_cache_is_valid(idx_dir, tmp_path, damage):
    """The cache was made from good files; one of them is damaged since: the damage is reported, not hidden
    behind the cache (a mistyped or broken --data-dir used to train on the cache silently)."""
    spec, cache = spec_of(idx_dir), tmp_path / "cache"
    load_mnist(idx_dir, cache, spec, download=False)
    path = idx_dir / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        raw[-1] ^= 0xFF
        path.write_bytes(gzip.compress(bytes(raw)))
    message = "cannot be read or decompressed" if damage == "truncated" else "does not match the official"
    with pytest.raises(DataError, match=message):
        load_mnist(idx_dir, cache, spec, download=False)


def test_a_named_data_folder_must_exist_and_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="--data-dir .*missing: no such folder; pass the folder that holds"):
        DataSource(tmp_path / "missing", None, named_by="--data-dir").open()
    with pytest.raises(DataError, match="MNIST_DIR .*file is a file, not a folder"):
        DataSource(tmp_path / "file", None, named_by="MNIST_DIR").inputs()


def test_data_source_says_who_named_the_folder(monkeypatch, tmp_path):
    import argparse

    flags = argparse.Namespace(data_dir=None, cache_dir=None, allow_custom_data=False, no_download=True)
    monkeypatch.delenv("MNIST_DIR", raising=False)
    assert data_source(flags).named_by is None  # the project's data/: the cache alone may stand for it
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="MNIST_DIR .*typo: no such folder"):
        data_source(flags).open()
    flags.data_dir = tmp_path / "other"
    assert data_source(flags).named_by == "--data-dir"


def test_a_pipe_under_a_data_file_name_is_named(idx_dir):
    (idx_dir / "train-images-idx3-ubyte.gz").unlink()
    os.mkfifo(idx_dir / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not a regular file \\(a pipe\\)"):
        DataSource(idx_dir, None, allow_custom=True, download=False).open()


def test_the_data_files_and_the_cache_are_inputs(idx_dir, tmp_path):
    inputs = DataSource(idx_dir, tmp_path / "cache").inputs()
    assert inputs["the data file train-labels-idx1-ubyte.gz"] == idx_dir / "train-labels-idx1-ubyte.gz"
    assert inputs["the data cache's test.pt (--cache-dir)"] == tmp_path / "cache" / "test.pt"
    assert not any("cache" in what for what in DataSource(idx_dir, tmp_path, allow_custom=True).inputs())


def test_custom_files_are_never_cached(idx_dir, tmp_path):
    load_mnist(idx_dir, tmp_path / "cache", CUSTOM_FILES, download=False)
    assert not (tmp_path / "cache").exists()


def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    assert resolve_data_dir("elsewhere").name == "elsewhere"
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("MNIST_DIR")
    assert resolve_data_dir(None).name == "data"
    assert resolve_data_dir(None).is_absolute()  # resolved against the project, not the current directory


def test_preprocess_pads_and_normalizes():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 255
    images[1, 27, 27] = 128
    out = preprocess(images)
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32
    assert out[0, 0, 2, 2] == pytest.approx((1.0 - MNIST_MEAN) / MNIST_STD, abs=1e-6)  # pixel (0,0) moved by 2
    assert out[1, 0, 29, 29] == pytest.approx((128 / 255 - MNIST_MEAN) / MNIST_STD, abs=1e-6)
    assert out[0, 0, 0, 0] == pytest.approx(BACKGROUND, abs=1e-6)  # the padding is background
    assert out[0, 0, 31, 31] == pytest.approx(-0.424212, abs=1e-5)


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loaders_reproducible_and_test_in_order(idx_dir):
    data = load_mnist(idx_dir, None, CUSTOM_FILES, download=False)
    first = make_loaders(data, Recipe(batch_size=16, seed=3, val_size=16))
    again = make_loaders(data, Recipe(batch_size=16, seed=3, val_size=16))
    other = make_loaders(data, Recipe(batch_size=16, seed=4, val_size=16))
    a, b, c = batches(first.train), batches(again.train), batches(other.train)
    assert len(a) == (N_TRAIN - 16) // 16
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(a, c))
    test_labels = torch.cat([y for _, y in first.test])
    assert torch.equal(test_labels, data.test_labels)  # never shuffled
    assert first.held_out_split == "val"
    val_labels = torch.cat([y for _, y in first.held_out])
    assert len(val_labels) == 16 and len(first.train.dataset) == N_TRAIN - 16


def test_loader_limit_and_bad_sizes(idx_dir):
    data = load_mnist(idx_dir, None, CUSTOM_FILES, download=False)
    loaders = make_loaders(data, Recipe(batch_size=8, limit=32))
    assert len(loaders.train.dataset) == 32 and len(loaders.test.dataset) == 32
    with pytest.raises(UserError, match="--val-size"):
        make_loaders(data, Recipe(batch_size=8, val_size=N_TRAIN))
    with pytest.raises(UserError, match="--batch-size"):
        make_loaders(data, Recipe(batch_size=N_TRAIN + 1))


def test_unwritable_cache_warns_and_goes_on(idx_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    data = load_mnist(idx_dir, blocker / "cache", spec_of(idx_dir), download=False)
    assert data.train_images.shape == (N_TRAIN, 28, 28)
    assert "the MNIST cache in" in (err := capsys.readouterr().err) and "failed and is skipped" in err


def test_own_files_are_never_replaced_by_a_download(tmp_path, monkeypatch):
    import data

    monkeypatch.setattr(data, "_try_download", lambda *a: pytest.fail("custom data must not trigger a download"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="MNIST not found in"):
        DataSource(tmp_path / "empty", None, allow_custom=True, download=True).open()


def test_download_goes_into_the_data_dir(tmp_path, monkeypatch):
    import data

    asked = []
    monkeypatch.setattr(data, "_try_download", lambda directory, files: asked.append(directory))
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="and the download failed"):
        DataSource(tmp_path / "mine", None).open()
    assert asked == [tmp_path / "mine"]


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, train, download):  # as torchvision does without a network: its folders, then the failure
        (Path(root) / "MNIST" / "raw").mkdir(parents=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="and the download failed"):
        DataSource(tmp_path / "mine", None).open()
    assert list((tmp_path / "mine").iterdir()) == []


def test_a_file_as_data_dir_is_named(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder; pass the folder that holds the four MNIST files"):
        DataSource(tmp_path / "train-images-idx3-ubyte.gz", None, download=False).open()


def test_fingerprint_tells_data_sets_apart():
    a, b = synthetic_mnist(N_TRAIN, N_TEST, seed=0), synthetic_mnist(N_TRAIN, N_TEST, seed=0)
    assert fingerprint(a) == fingerprint(b)
    changed = b.train_images.clone()
    changed[5, 3, 3] += 1
    assert fingerprint(b._replace(train_images=changed)) != fingerprint(a)
    assert fingerprint(synthetic_mnist(N_TRAIN - 1, N_TEST)) != fingerprint(a)


def test_a_held_out_set_smaller_than_the_processes_is_refused(idx_dir):
    data = load_mnist(idx_dir, None, CUSTOM_FILES, download=False)
    with pytest.raises(UserError, match="1 held-out images cannot be shared by 2 processes"):
        make_loaders(data, Recipe(batch_size=8, val_size=1), world=World(0, 0, 2))


@pytest.mark.parametrize("val_size", [0, 17])
def test_each_process_evaluates_its_own_shard_of_the_held_out_images(idx_dir, val_size):
    """Under torchrun the per-epoch accuracy is summed over shards: together they are the held-out set, once."""
    data = load_mnist(idx_dir, None, CUSTOM_FILES, download=False)
    recipe = Recipe(batch_size=6, val_size=val_size)
    whole = torch.cat([x for x, _ in make_loaders(data, recipe).held_out])
    shards = [torch.cat([x for x, _ in make_loaders(data, recipe, world=World(r, r, 3)).held_out]) for r in range(3)]
    assert [len(s) for s in shards] == [len(t) for t in torch.tensor_split(whole, 3)]
    assert torch.equal(torch.cat(shards), whole)
