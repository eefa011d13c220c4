"""MNIST in, DataLoaders out.

The four official IDX files are read once, verified (magic number, shape, count, label
range, MD5 of the decompressed bytes), and cached as torchvision's legacy ``training.pt`` /
``test.pt`` pairs ``(uint8 images N x 28 x 28, int64 labels N)``, whose MD5s are checked again
on every load. The cache stands for the files it was made from (their sizes and SHA-256s, in
``sources.json``): a data folder whose files differ (damaged, truncated, others) is read again,
and a folder named with --data-dir or $MNIST_DIR must hold them. Padding 28 -> 32 and
normalization are applied once to the whole uint8 tensor, and the loaders hand out batches
by indexing that tensor: no per-sample Python work, which is what makes the usual
``ToTensor()``-per-image pipeline slow.
"""

import argparse
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.cli import PROJECT_DIR, UserError

import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from LeNet5 import INPUT_NORMALIZATION
from support.augment import Augmentation
from support.distributed import ONE, World
from support.files import (
    Kind,
    atomic_torch_save,
    file_sha256,
    json_kind,
    kind_of,
    missing_folders,
    refuse_foreign_file,
    remove_if_empty,
    write_json,
)
from support.idx import CUSTOM_FILES, MNIST, MNIST_FILES, DataError, IdxFile, idx_bytes, read_idx, write_idx
from support.optional import attempt
from support.recipes import Recipe, augmentation_for

DEFAULT_DATA_DIR = PROJECT_DIR / "data"
DEFAULT_CACHE_DIR = DEFAULT_DATA_DIR / "processed"
EVAL_BATCH_SIZE = 500  # evaluation only: as large as keeps the memory small
MNIST_MEAN, MNIST_STD, PAD = INPUT_NORMALIZATION["mean"], INPUT_NORMALIZATION["std"], INPUT_NORMALIZATION["pad"]


def resolve_data_dir(cli_value: str | Path | None) -> Path:
    """--data-dir, else $MNIST_DIR, else the project's data/ folder."""
    return Path(cli_value or os.environ.get("MNIST_DIR") or DEFAULT_DATA_DIR).expanduser()


def write_mnist(directory: Path, data: "MNIST", gz: bool = True) -> Path:
    """Write the four files under their official names, so that load_mnist(directory) reads `data` back."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, spec in MNIST_FILES.items():
        write_idx(directory / (spec.name + ".gz" * gz), getattr(data, key), spec.magic)
    return directory


def find_idx_files(data_dir: Path, files: dict[str, IdxFile]) -> dict[str, Path] | None:
    """Paths of all four files in data_dir or torchvision's data_dir/MNIST/raw; None if any is missing.
    A pipe, a device or a folder under one of the names is named (a DataError), not passed over as missing."""
    found = {}
    for key, spec in files.items():
        candidates = [d / n for d in (data_dir, data_dir / "MNIST" / "raw") for n in (spec.name + ".gz", spec.name)]
        for path in candidates:
            if path.is_file():
                found[key] = path
                break
            if path.exists():
                raise DataError(f"{path} is not a regular file ({kind_of(path)}); put the MNIST file itself there")
        else:
            return None
    return found


def load_mnist(
    data_dir: Path,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    files: dict[str, IdxFile] = MNIST_FILES,
    download: bool = True,
    cache_alone: bool = False,
) -> MNIST:
    """The verified MNIST tensors: from the .pt cache when it stands for data_dir's files, else from the files.

    Only data verified against the official checksums is cached; ``files=CUSTOM_FILES`` reads
    your own IDX files with the structure checks alone and never touches the cache. The cache is
    used when data_dir's four files are byte for byte those it was made from (a SHA-256 of 11 MB:
    milliseconds, against a second to decompress and verify them); cache_alone: also when data_dir
    holds none of them (the project's own data/, whose files may have been deleted after the cache was made).
    """
    cacheable = cache_dir is not None and all(f.md5 for f in files.values())
    paths = find_idx_files(data_dir, files)
    if cacheable and (paths is not None or cache_alone):
        cached = _load_cache(cache_dir, files) if paths is None or _made_from(cache_dir, paths) else None
        if cached is not None:
            return cached
    if paths is None and download and files is MNIST_FILES:  # never official MNIST in place of your own files
        paths = _try_download(data_dir, files)
    if paths is None:
        raise DataError(_missing_message(data_dir, files, tried_download=download and files is MNIST_FILES))
    record = _sources(paths) if cacheable else {}  # (before reading: a file replaced meanwhile is not vouched for)
    tensors = {key: read_idx(path, files[key]) for key, path in paths.items()}
    data = MNIST(**tensors)
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if len(images) != len(labels):
            raise DataError(f"{data_dir}: {len(images):,} {split} images but {len(labels):,} labels")
    if cacheable:  # an optional part: a read-only project folder works on, without the cache
        attempt(
            f"the MNIST cache in {cache_dir} (--cache-dir chooses another folder)",
            lambda: _save_cache(data, cache_dir, record),
        )
    return data


def _is_cache_tensors(path: Path) -> bool:
    """Whether `path` is a torch.save of two tensors, as _save_cache writes them: one of other data (or other
    shapes) is the cache's own and rebuilt; a checkpoint or anything else is the user's and never replaced."""
    if not path.is_file():  # (a pipe is nobody's cache, and would be waited on)
        return False
    try:
        value = torch.load(path, weights_only=True, mmap=True)  # (mmap: 47 MB are not read to be judged)
    except Exception:
        return False
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value)


CACHE_TENSORS = Kind("a data cache file", _is_cache_tensors)
# What the cache folder holds, and what a file there must be for the cache to replace it.
CACHE_KINDS = {"training.pt": CACHE_TENSORS, "test.pt": CACHE_TENSORS,
               "sources.json": json_kind("the data cache's sources list", set(MNIST_FILES))}  # fmt: skip
CACHE_FILES = tuple(CACHE_KINDS)


def _save_cache(data: MNIST, cache_dir: Path, sources: dict[str, dict[str, Any]]) -> None:
    for name, kind in CACHE_KINDS.items():  # all checked before any is written: a foreign one skips the cache
        refuse_foreign_file(cache_dir / name, f"--cache-dir's {name}", kind, "--cache-dir")
    atomic_torch_save((data.train_images, data.train_labels), cache_dir / "training.pt")
    atomic_torch_save((data.test_images, data.test_labels), cache_dir / "test.pt")
    write_json(sources, cache_dir / "sources.json")  # last: the files it names are verified, and cached


def _sources(paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each file's size and SHA-256, as it is on disk (compressed or not)."""
    return {key: {"size": path.stat().st_size, "sha256": file_sha256(path)} for key, path in paths.items()}


def _made_from(cache_dir: Path, paths: dict[str, Path]) -> bool:
    """Whether the cache was made from exactly these files (the sizes first: a truncated file costs no hashing)."""
    try:
        recorded = json.loads((cache_dir / "sources.json").read_text())
        if {key: recorded[key]["size"] for key in paths} != {key: p.stat().st_size for key, p in paths.items()}:
            return False
    except (OSError, ValueError, KeyError, TypeError):  # none yet (a cache of an older version), or damaged
        return False
    return recorded == _sources(paths)


def _load_cache(cache_dir: Path, files: dict[str, IdxFile]) -> MNIST | None:
    """The cache, re-verified (types, shapes, and the MD5 of each tensor written back as its IDX file: a
    cache of other data, FashionMNIST's say, is never taken for MNIST); None means rebuild it."""
    parts = []
    for name, split in (("training.pt", "train"), ("test.pt", "test")):
        if not (cache_dir / name).is_file():  # (a pipe there would be waited on for ever)
            return None
        try:
            images, labels = torch.load(cache_dir / name, weights_only=True)
        except Exception:  # missing, truncated or foreign: rebuilt from the IDX files
            return None
        count = files[f"{split}_images"].count
        if not (
            isinstance(images, torch.Tensor)
            and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8
            and labels.dtype == torch.int64
            and tuple(images.shape) == (count, 28, 28)
            and tuple(labels.shape) == (count,)
        ):
            return None
        for tensor, spec in ((images, files[f"{split}_images"]), (labels, files[f"{split}_labels"])):
            if hashlib.md5(idx_bytes(tensor, spec.magic)).hexdigest() != spec.md5:
                return None
        parts += [images, labels]
    return MNIST(*parts)


def _try_download(data_dir: Path, files: dict[str, IdxFile]) -> dict[str, Path] | None:
    """torchvision's downloader, into data_dir/MNIST/raw (where find_idx_files looks); None when offline."""
    from torchvision.datasets import MNIST as TorchvisionMNIST

    raw = data_dir / "MNIST" / "raw"
    made = missing_folders(raw)
    try:
        TorchvisionMNIST(str(data_dir), train=True, download=True)
    except Exception:  # no network (the usual case here): the caller explains how to fix it
        remove_if_empty(*made)  # the downloader's empty folders do not stay behind
        return None
    return find_idx_files(data_dir, files)


def fingerprint(data: MNIST) -> str:
    """A short hash of all four tensors: a resumed run must continue on the data it started on."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in data:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _missing_message(data_dir: Path, files: dict[str, IdxFile], tried_download: bool) -> str:
    if data_dir.is_file():
        return f"the data folder {data_dir} is a file; pass the folder that holds the four MNIST files"
    names = ", ".join(f"{f.name}[.gz]" for f in files.values())
    download = " (and the download failed)" * tried_download
    return (
        f"MNIST not found in {data_dir} or {data_dir / 'MNIST' / 'raw'}{download}: "
        f"need {names}. Point to them with --data-dir DIR or MNIST_DIR=DIR"
    )


@functools.cache
def pad_and_normalize():
    """torchvision's transforms, built on first use: importing torchvision takes a second that --help,
    the error paths and a process that fails early do not need."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Pad(PAD, fill=0),  # 28x28 -> 32x32 with 2 background pixels on every side, as LeNet-5 expects
            v2.ToDtype(torch.float32, scale=True),  # uint8 0..255 -> float 0..1
            v2.Normalize([MNIST_MEAN], [MNIST_STD]),
        ]
    )


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 (or N x 1 x 28 x 28) -> float32 N x 1 x 32 x 32, padded and normalized, in one batched call."""
    return pad_and_normalize()(images.reshape(-1, 1, 28, 28))


class TensorBatches(torch.utils.data.Dataset):
    """Images and labels in memory, indexed a whole batch at a time: dataset[list of indices] -> (x, y)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        augmentation: Augmentation | None = None,
        generator: torch.Generator | None = None,
    ):
        self.images, self.labels = images, labels  # N x 1 x 32 x 32 float32, N int64
        self.augmentation, self.generator = augmentation, generator

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)  # (the training batches' are there already)
        images = self.images[index]
        if self.augmentation is not None:
            images = self.augmentation(images, self.generator)
        return images, self.labels[index]


@dataclass(frozen=True)
class Generators:
    """The training data's random streams, on the training device: drawing from them never waits for the host."""

    shuffle: torch.Generator  # the same on every process: which images form each global batch
    augment: torch.Generator  # this process's distortions; in a single process, the same object as shuffle


def make_generators(seed: int, device: torch.device | str = "cpu", world: World = ONE) -> Generators:
    shuffle = torch.Generator(device).manual_seed(seed)
    if not world.distributed:  # one stream, as always: a seed keeps giving the weights it always gave
        return Generators(shuffle, shuffle)
    return Generators(shuffle, torch.Generator(device).manual_seed((seed * 1_000_003 + world.rank + 1) % 2**63))


class GlobalBatches(torch.utils.data.Sampler):
    """Each epoch, one permutation of the training images (the shared shuffle generator), cut into global
    batches of `global_batch`; this process takes its contiguous share of each. The sequence of global
    batches does not depend on the number of processes, and no two processes see the same image.

    The permutation is made on the generator's device and handed out as slices of it: a batch's
    indices never travel from the host (on CUDA, a copy that would stall every step)."""

    def __init__(self, size: int, global_batch: int, generator: torch.Generator, world: World = ONE):
        if global_batch % world.size:
            raise UserError(
                f"--batch-size {global_batch} (the global batch) must split evenly over {world.size} processes"
            )
        self.size, self.global_batch, self.generator = size, global_batch, generator
        self.share = global_batch // world.size
        self.first = world.rank * self.share

    def __len__(self) -> int:
        return self.size // self.global_batch  # drop_last: every step has the same shape

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator, device=self.generator.device)
        for start in range(0, len(self) * self.global_batch, self.global_batch):
            yield order[start + self.first : start + self.first + self.share]
        # torch's RandomSampler draws one more permutation as a pass ends; so does this, so that one
        # process reproduces exactly the batches (and weights) of the RandomSampler this replaced.
        torch.randperm(self.size, generator=self.generator, device=self.generator.device)


@dataclass(frozen=True)
class Loaders:
    train: DataLoader  # this process's share of each global batch, distorted when asked
    held_out: DataLoader  # accuracy after each epoch: validation images, or the test set; this process's shard
    held_out_split: str  # "val" or "test"
    test: DataLoader  # the whole test set, in order: the final report
    generators: Generators


def make_loaders(data: MNIST, recipe: Recipe, device: torch.device | str = "cpu", world: World = ONE) -> Loaders:
    """DataLoaders over the preprocessed tensors (kept on `device`), as the recipe says (batch size,
    seed, augmentation, validation hold-out, limit): training shuffled by the seed, the rest in order."""
    limit, val_size = recipe.limit, recipe.val_size
    train_images, train_labels = data.train_images[:limit], data.train_labels[:limit]
    test_images, test_labels = data.test_images[:limit], data.test_labels[:limit]
    if not 0 <= val_size < len(train_labels):
        raise UserError(f"--val-size {val_size} must be between 0 and {len(train_labels) - 1} (the training images)")
    if recipe.batch_size > len(train_labels) - val_size:  # (--batch-size itself is at least 1)
        raise UserError(
            f"--batch-size {recipe.batch_size} is more than the {len(train_labels) - val_size} training images; "
            "use a smaller --batch-size (or a larger --limit, or a smaller --val-size)"
        )
    # The validation images are a fixed random subset, chosen by the seed, never trained on.
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(recipe.seed))
    train_index, val_index = order[val_size:], order[:val_size]
    generators = make_generators(recipe.seed, device, world)
    images, labels = preprocess(train_images[train_index]).to(device), train_labels[train_index].to(device)
    train_set = TensorBatches(images, labels, augmentation_for(recipe), generators.augment)
    train = DataLoader(train_set, batch_size=None, sampler=GlobalBatches(len(train_set), recipe.batch_size,
                                                                        generators.shuffle, world))  # fmt: skip
    test = eval_loader(test_images, test_labels, device)
    held_out = test if not val_size and not world.distributed else None
    if held_out is None:  # the validation images, or this process's shard of them (or of the test set)
        images, labels = (train_images[val_index], train_labels[val_index]) if val_size else (test_images, test_labels)
        if len(labels) < world.size:
            raise UserError(f"{len(labels)} held-out images cannot be shared by {world.size} processes; use more")
        shard = torch.tensor_split(torch.arange(len(labels)), world.size)[world.rank]
        held_out = eval_loader(images[shard], labels[shard], device)
    return Loaders(train, held_out, "val" if val_size else "test", test, generators)


def eval_loader(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH_SIZE
) -> DataLoader:
    """An in-order loader (never shuffled) over uint8 images, preprocessed once."""
    dataset = TensorBatches(preprocess(images).to(device), labels.to(device))
    # batch_size=None + a BatchSampler: the dataset receives whole index lists, so there is no per-sample collate.
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(SequentialSampler(dataset), batch_size, False))


@dataclass(frozen=True)
class DataSource:
    """Where the MNIST files come from, as the command lines' data flags say."""

    data_dir: Path
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    allow_custom: bool = False
    download: bool = True
    named_by: str | None = "the data folder"  # "--data-dir", "MNIST_DIR"; None: the default data/, which the
    # cache alone may stand for; a folder someone named must exist and hold the files

    @property
    def files(self) -> dict[str, IdxFile]:
        return CUSTOM_FILES if self.allow_custom else MNIST_FILES

    def check(self) -> None:
        """A data folder that was named exists and is a folder: a mistyped --data-dir is refused at once, not
        replaced by the cache of other files."""
        if self.named_by is None or self.data_dir.is_dir():
            return
        if not self.data_dir.exists():
            raise DataError(f"{self.named_by} {self.data_dir}: no such folder; pass the folder that holds the four "
                            "MNIST files (an empty one for the download)")  # fmt: skip
        raise DataError(f"{self.named_by} {self.data_dir} is {kind_of(self.data_dir)}, not a folder; pass the folder "
                        "that holds the four MNIST files")  # fmt: skip

    def inputs(self) -> dict[str, Path | None]:
        """What open() reads, by what it is, for an OutputPlan: the data files found, and the cache's."""
        self.check()
        found = find_idx_files(self.data_dir, self.files) or {}
        inputs: dict[str, Path | None] = {f"the data file {path.name}": path for path in found.values()}
        if self.cache_dir is not None and not self.allow_custom:
            inputs |= {f"the data cache's {name} (--cache-dir)": self.cache_dir / name for name in CACHE_FILES}
        return inputs

    def flags(self) -> list[str]:
        """The data flags that name this source again, for a command printed to be run later."""
        flags = ["--data-dir", str(self.data_dir)] + (["--cache-dir", str(self.cache_dir)] if self.cache_dir else [])
        return flags + ["--allow-custom-data"] * self.allow_custom + ["--no-download"] * (not self.download)

    def open(self) -> MNIST:
        self.check()
        return load_mnist(self.data_dir, self.cache_dir, self.files, self.download, cache_alone=self.named_by is None)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The data flags every entry point that reads MNIST shares; data_source() turns them into a DataSource."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", type=Path, help="folder with the four MNIST IDX files (default: $MNIST_DIR or data/)")
    g.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the verified .pt cache lives")
    g.add_argument("--allow-custom-data", action="store_true", help="accept your own IDX files (skip count/MD5 checks)")
    g.add_argument("--no-download", action="store_true", help="never try torchvision's download")


def data_source(args: argparse.Namespace) -> DataSource:
    """The DataSource that add_data_args' flags describe: --data-dir, else $MNIST_DIR, else data/."""
    named_by = "--data-dir" if args.data_dir else "MNIST_DIR" if os.environ.get("MNIST_DIR") else None
    return DataSource(
        resolve_data_dir(args.data_dir), args.cache_dir, args.allow_custom_data, not args.no_download, named_by
    )
