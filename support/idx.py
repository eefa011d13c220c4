"""The IDX file format of the MNIST distribution: read and verify, or write.

An IDX file is a big-endian header (a magic number whose last byte is the number of dimensions,
then each dimension) followed by the uint8 values; MNIST ships four of them, gzip-compressed.
"""

import gzip
import hashlib
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from support.cli import UserError

import torch

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


class MNIST(NamedTuple):
    """What the four files hold."""

    train_images: torch.Tensor  # uint8 N x 28 x 28
    train_labels: torch.Tensor  # int64 N
    test_images: torch.Tensor
    test_labels: torch.Tensor


# Same names and structure checks, no count or checksum: for IDX files you made yourself.
CUSTOM_FILES = {key: IdxFile(f.name, f.magic, None, None) for key, f in MNIST_FILES.items()}


# More than this is a damaged header or a decompression bomb, not a data set (1.3 million 28x28 images).
MAX_IDX_BYTES = 2**30


def read_idx(path: Path, spec: IdxFile) -> torch.Tensor:
    """Parse and verify one IDX file (gzip-compressed or not); DataError says what is wrong."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as file:
            header, dims = _read_header(file, path, spec)
            body = _read_body(file, path, dims, len(header))
    except (OSError, EOFError, zlib.error) as err:  # (gzip.BadGzipFile is an OSError)
        raise DataError(f"{path}: cannot be read or decompressed ({err}); replace it with a fresh copy") from None
    if spec.md5 is not None and (md5 := hashlib.md5(header + body).hexdigest()) != spec.md5:
        raise DataError(f"{path}: MD5 {md5} does not match the official {spec.md5}: the file is corrupted")
    values = torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)
    if spec.magic == LABEL_MAGIC:
        if values.numel() and int(values.max()) > 9:
            raise DataError(f"{path}: label {int(values.max())} is out of range 0..9")
        return values.long()
    return values


def _read_header(file: BinaryIO, path: Path, spec: IdxFile) -> tuple[bytes, list[int]]:
    """The header's bytes and dimensions, checked against `spec` before any of the values is read: a small
    .gz that claims (or inflates to) gigabytes is refused without decompressing it."""
    header = file.read(4)
    if len(header) < 4:
        raise DataError(f"{path}: truncated ({len(header)} bytes): not an IDX file")
    if (magic := int.from_bytes(header, "big")) != spec.magic:
        raise DataError(f"{path}: bad magic number {magic}, expected {spec.magic}: not an MNIST {_kind(spec)} file")
    ndim = header[3]
    header += file.read(4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated ({len(header)} bytes): its header is incomplete")
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if spec.magic == IMAGE_MAGIC and dims[1:] != [28, 28]:
        raise DataError(f"{path}: images are {'x'.join(map(str, dims[1:]))}, expected 28x28")
    if dims[0] == 0:
        raise DataError(f"{path}: holds no {_kind(spec)}; it must hold at least one")
    if spec.count is not None and dims[0] != spec.count:
        raise DataError(f"{path}: holds {dims[0]:,} {_kind(spec)}, expected {spec.count:,}")
    if len(header) + math.prod(dims) > MAX_IDX_BYTES:
        raise DataError(f"{path}: its header claims {dims[0]:,} {_kind(spec)}, more than this reader takes")
    return header, dims


def _read_body(file: BinaryIO, path: Path, dims: list[int], header_size: int) -> bytes:
    """The values the header promises, and one byte more to see whether the file goes on."""
    size = math.prod(dims)
    try:
        body = file.read(size + 1)
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read its {size:,} bytes") from None
    if len(body) < size:
        raise DataError(f"{path}: truncated: {header_size + len(body):,} bytes, its header {dims} needs "
                        f"{header_size + size:,}")  # fmt: skip
    if len(body) > size:
        raise DataError(f"{path}: has trailing bytes after the {header_size + size:,} its header {dims} needs")
    return body


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
