"""MNIST in, DataLoaders out.

The four official IDX files are read once, verified (magic number, shape, count, label
range, MD5 of the decompressed bytes), and cached as torchvision's legacy ``training.pt`` /
``test.pt`` pairs ``(uint8 images N x 28 x 28, int64 labels N)``. Padding 28 -> 32 and
normalization are applied once to the whole uint8 tensor, and the loaders hand out batches
by indexing that tensor: no per-sample Python work, which is what makes the usual
``ToTensor()``-per-image pipeline slow.
"""

import argparse
import gzip
import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torchvision.transforms import v2

from helper import PROJECT_DIR, UserError, atomic_torch_save
from LeNet5 import INPUT_NORMALIZATION

DEFAULT_DATA_DIR = PROJECT_DIR / "data"
DEFAULT_CACHE_DIR = DEFAULT_DATA_DIR / "processed"
MNIST_MEAN, MNIST_STD, PAD = INPUT_NORMALIZATION["mean"], INPUT_NORMALIZATION["std"], INPUT_NORMALIZATION["pad"]
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


class DataError(UserError):
    """The MNIST files are missing, damaged or not what they claim to be."""


@dataclass(frozen=True)
class IdxFile:
    name: str  # official name, without ".gz"
    magic: int
    count: int | None  # None: accept any count (your own IDX files)
    md5: str | None  # MD5 of the decompressed bytes; None: not checked


MNIST_FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte", IMAGE_MAGIC, 60_000, "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": IdxFile("train-labels-idx1-ubyte", LABEL_MAGIC, 60_000, "a25bea736e30d166cdddb491f175f624"),
    "test_images": IdxFile("t10k-images-idx3-ubyte", IMAGE_MAGIC, 10_000, "2646ac647ad5339dbf082846283269ea"),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", LABEL_MAGIC, 10_000, "27ae3e4e09519cfbb04c329615203637"),
}
# Same names and structure checks, no count or checksum: for IDX files you made yourself.
CUSTOM_FILES = {key: IdxFile(f.name, f.magic, None, None) for key, f in MNIST_FILES.items()}


class MNIST(NamedTuple):
    train_images: torch.Tensor  # uint8 N x 28 x 28
    train_labels: torch.Tensor  # int64 N
    test_images: torch.Tensor
    test_labels: torch.Tensor


def resolve_data_dir(cli_value: str | Path | None) -> Path:
    """--data-dir, else $MNIST_DIR, else the project's data/ folder."""
    return Path(cli_value or os.environ.get("MNIST_DIR") or DEFAULT_DATA_DIR).expanduser()


def read_idx(path: Path, spec: IdxFile) -> torch.Tensor:
    """Parse and verify one IDX file (gzip-compressed or not); DataError says what is wrong."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot be read or decompressed ({err}); replace it with a fresh copy") from None
    if len(raw) < 8:
        raise DataError(f"{path}: truncated ({len(raw)} bytes): not an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != spec.magic:
        raise DataError(f"{path}: bad magic number {magic}, expected {spec.magic}: not an MNIST {_kind(spec)} file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected_bytes = header + math.prod(dims)
    if len(raw) != expected_bytes:
        what = "truncated" if len(raw) < expected_bytes else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(raw):,} bytes, its header {dims} needs {expected_bytes:,}")
    if spec.magic == IMAGE_MAGIC and dims[1:] != [28, 28]:
        raise DataError(f"{path}: images are {'x'.join(map(str, dims[1:]))}, expected 28x28")
    if dims[0] == 0:
        raise DataError(f"{path}: holds no {_kind(spec)}; it must hold at least one")
    if spec.count is not None and dims[0] != spec.count:
        raise DataError(f"{path}: holds {dims[0]:,} {_kind(spec)}, expected {spec.count:,}")
    if spec.md5 is not None and (md5 := hashlib.md5(raw).hexdigest()) != spec.md5:
        raise DataError(f"{path}: MD5 {md5} does not match the official {spec.md5}: the file is corrupted")
    values = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)
    if spec.magic == LABEL_MAGIC:
        if values.numel() and int(values.max()) > 9:
            raise DataError(f"{path}: label {int(values.max())} is out of range 0..9")
        return values.long()
    return values


def _kind(spec: IdxFile) -> str:
    return "images" if spec.magic == IMAGE_MAGIC else "labels"


def idx_bytes(values: torch.Tensor, magic: int) -> bytes:
    """A uint8 tensor in the IDX format: big-endian magic number, each dimension, then the bytes."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in values.shape)
    return header + values.to(torch.uint8).contiguous().numpy().tobytes()


def write_idx(path: Path, values: torch.Tensor, magic: int) -> None:
    """Write an IDX file (gzip-compressed when the name ends in .gz): make your own data set or test data."""
    payload = idx_bytes(values, magic)
    Path(path).write_bytes(gzip.compress(payload) if Path(path).suffix == ".gz" else payload)


def write_mnist(directory: Path, data: "MNIST", gz: bool = True) -> Path:
    """Write the four files under their official names, so that load_mnist(directory) reads `data` back."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, spec in MNIST_FILES.items():
        write_idx(directory / (spec.name + ".gz" * gz), getattr(data, key), spec.magic)
    return directory


def find_idx_files(data_dir: Path, files: dict[str, IdxFile]) -> dict[str, Path] | None:
    """Paths of all four files in data_dir or torchvision's data_dir/MNIST/raw; None if any is missing."""
    found = {}
    for key, spec in files.items():
        candidates = [d / n for d in (data_dir, data_dir / "MNIST" / "raw") for n in (spec.name + ".gz", spec.name)]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def load_mnist(
    data_dir: Path,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    files: dict[str, IdxFile] = MNIST_FILES,
    download: bool = True,
) -> MNIST:
    """The verified MNIST tensors: from the .pt cache when valid, else from the IDX files.

    Only data verified against the official checksums is cached; ``files=CUSTOM_FILES`` reads
    your own IDX files with the structure checks alone and never touches the cache.
    """
    cacheable = cache_dir is not None and all(f.md5 for f in files.values())
    if cacheable and (cached := _load_cache(cache_dir, files)) is not None:
        return cached
    paths = find_idx_files(data_dir, files)
    if paths is None and download and files is MNIST_FILES:  # never official MNIST in place of your own files
        paths = _try_download(data_dir, files)
    if paths is None:
        raise DataError(_missing_message(data_dir, files, tried_download=download and files is MNIST_FILES))
    tensors = {key: read_idx(path, files[key]) for key, path in paths.items()}
    data = MNIST(**tensors)
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if len(images) != len(labels):
            raise DataError(f"{data_dir}: {len(images):,} {split} images but {len(labels):,} labels")
    if cacheable:
        try:
            atomic_torch_save((data.train_images, data.train_labels), cache_dir / "training.pt")
            atomic_torch_save((data.test_images, data.test_labels), cache_dir / "test.pt")
        except UserError as err:  # a read-only project folder: work on, just without the cache
            print(f"warning: {err} (the MNIST cache is skipped; pass --cache-dir to keep one)", file=sys.stderr)
    return data


def _load_cache(cache_dir: Path, files: dict[str, IdxFile]) -> MNIST | None:
    """Cheap re-verification of the cache (types, shapes, counts); None means rebuild it."""
    parts = []
    for name, split in (("training.pt", "train"), ("test.pt", "test")):
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
        parts += [images, labels]
    return MNIST(*parts)


def _try_download(data_dir: Path, files: dict[str, IdxFile]) -> dict[str, Path] | None:
    """torchvision's downloader, into data_dir/MNIST/raw (where find_idx_files looks); None when offline."""
    from torchvision.datasets import MNIST as TorchvisionMNIST

    try:
        TorchvisionMNIST(str(data_dir), train=True, download=True)
    except Exception:  # no network (the usual case here): the caller explains how to fix it
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


_PAD_AND_NORMALIZE = v2.Compose(
    [
        v2.Pad(PAD, fill=0),  # 28x28 -> 32x32 with 2 background pixels on every side, as LeNet-5 expects
        v2.ToDtype(torch.float32, scale=True),  # uint8 0..255 -> float 0..1
        v2.Normalize([MNIST_MEAN], [MNIST_STD]),
    ]
)
BACKGROUND = (0.0 - MNIST_MEAN) / MNIST_STD  # the value of a blank pixel after normalization


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 (or N x 1 x 28 x 28) -> float32 N x 1 x 32 x 32, padded and normalized, in one batched call."""
    return _PAD_AND_NORMALIZE(images.reshape(-1, 1, 28, 28))


def random_affine(
    images: torch.Tensor, generator: torch.Generator, degrees: float = 10.0, scale: float = 0.1, shift_px: float = 2.0
) -> torch.Tensor:
    """Rotate, scale and shift every image of a N x 1 x H x W batch by its own random amount, in one call.

    Handwriting varies in slant, size and position; seeing that variation keeps the
    small network from memorizing the training set. Blank pixels stay background.
    """
    n, _, height, _ = images.shape
    uniform = torch.rand(n, 4, generator=generator, device=generator.device).to(images.device)
    uniform = uniform * 2 - 1  # n x 4, each in [-1, 1): rotation, zoom, shift x, shift y
    angle = uniform[:, 0] * math.radians(degrees)
    zoom = 1 + uniform[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = uniform[:, 2:] * (2 * shift_px / height)  # affine_grid coordinates span [-1, 1]
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # n x H x W x 2
    # grid_sample fills outside the image with 0, so sample (x - background) and add it back.
    return F.grid_sample(images - BACKGROUND, grid, align_corners=False) + BACKGROUND


class TensorBatches(torch.utils.data.Dataset):
    """Images and labels in memory, indexed a whole batch at a time: dataset[list of indices] -> (x, y)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment_generator: torch.Generator | None = None):
        self.images, self.labels = images, labels  # N x 1 x 32 x 32 float32, N int64
        self.augment_generator = augment_generator

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        images = self.images[index]
        if self.augment_generator is not None:
            images = random_affine(images, self.augment_generator)
        return images, self.labels[index]


@dataclass(frozen=True)
class Loaders:
    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    generator: torch.Generator  # drives shuffling and augmentation: its state makes a run resumable


def make_loaders(
    data: MNIST,
    batch_size: int,
    seed: int,
    augment: bool = True,
    val_size: int = 0,
    limit: int | None = None,
    eval_batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> Loaders:
    """DataLoaders over the preprocessed tensors (kept on `device`): training shuffled by `seed`, the rest in order."""
    train_images, train_labels = data.train_images[:limit], data.train_labels[:limit]
    test_images, test_labels = data.test_images[:limit], data.test_labels[:limit]
    if not 0 <= val_size < len(train_labels):
        raise UserError(f"--val-size {val_size} must be between 0 and {len(train_labels) - 1} (the training images)")
    if batch_size < 1 or batch_size > len(train_labels) - val_size:
        raise UserError(f"--batch-size {batch_size} must be between 1 and {len(train_labels) - val_size}")
    # The validation images are a fixed random subset, chosen by the seed, never trained on.
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))
    train_index, val_index = order[val_size:], order[:val_size]
    generator = torch.Generator().manual_seed(seed)

    augment_generator = generator if augment else None
    train_set = TensorBatches(
        preprocess(train_images[train_index]).to(device), train_labels[train_index].to(device), augment_generator
    )
    # drop_last keeps every training step the same shape; the dropped images change every epoch.
    train = batch_loader(train_set, RandomSampler(train_set, generator=generator), batch_size, drop_last=True)
    val = None
    if val_size:
        val = eval_loader(train_images[val_index], train_labels[val_index], eval_batch_size, device)
    test = eval_loader(test_images, test_labels, eval_batch_size, device)
    return Loaders(train, val, test, generator)


def eval_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device | str) -> DataLoader:
    """An in-order loader (never shuffled) over uint8 images, preprocessed once."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1")
    dataset = TensorBatches(preprocess(images).to(device), labels.to(device))
    return batch_loader(dataset, SequentialSampler(dataset), batch_size)


def batch_loader(dataset: TensorBatches, sampler, batch_size: int, drop_last: bool = False) -> DataLoader:
    """A DataLoader that hands `dataset` whole batches of indices drawn from `sampler`."""
    # batch_size=None + a BatchSampler: the dataset receives whole index lists, so there is no per-sample collate.
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=drop_last))


@dataclass(frozen=True)
class DataSource:
    """Where the MNIST files come from, as the command lines' data flags say."""

    data_dir: Path
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    allow_custom: bool = False
    download: bool = True

    def open(self) -> MNIST:
        files = CUSTOM_FILES if self.allow_custom else MNIST_FILES
        return load_mnist(self.data_dir, self.cache_dir, files, self.download)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The data flags every entry point that reads MNIST shares; data_source() turns them into a DataSource."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", type=Path, help="folder with the four MNIST IDX files (default: $MNIST_DIR or data/)")
    g.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the verified .pt cache lives")
    g.add_argument("--allow-custom-data", action="store_true", help="accept your own IDX files (skip count/MD5 checks)")
    g.add_argument("--no-download", action="store_true", help="never try torchvision's download")


def data_source(args: argparse.Namespace) -> DataSource:
    """The DataSource that add_data_args' flags describe: --data-dir, else $MNIST_DIR, else data/."""
    return DataSource(resolve_data_dir(args.data_dir), args.cache_dir, args.allow_custom_data, not args.no_download)
